"""jaxseg CUDA custom calls"""

from collections.abc import Sequence


def registrations() -> dict: ...

def can_implement(pass_name: str, first_shape: Sequence[int], second_shape: Sequence[int], result_shape: Sequence[int], strides: Sequence[int], dilation: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int], transpose_kernel: bool) -> str:
    """
    Why the CUDA kernels cannot run this call (canonical shapes, as the handler receives them), or ''.
    """

max_spatial_dims: int = 3

max_kernel_size: int = 32
