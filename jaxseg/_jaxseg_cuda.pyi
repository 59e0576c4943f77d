"""jaxseg CUDA custom calls"""

from collections.abc import Sequence

from typing_extensions import CapsuleType


def registrations() -> dict: ...

def can_implement(pass_name: str, first_shape: Sequence[int], second_shape: Sequence[int], result_shape: Sequence[int], strides: Sequence[int], dilation: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int], transpose_kernel: bool) -> str:
    """
    Why the CUDA kernels cannot run this call (canonical shapes, as the handler receives them), or ''.
    """

max_spatial_dims: int = 3

def weight_grad_partial_bytes(first_shape: Sequence[int], second_shape: Sequence[int], result_shape: Sequence[int], strides: Sequence[int], dilation: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int], transpose_kernel: bool, dtype: str, multiprocessors: int) -> int:
    """
    Bytes of the weight gradient's split-K partials, the CUDA call's second result, for a device with this many multiprocessors (the handler splits within whatever buffer it gets).
    """

def handler_traits(handler: CapsuleType) -> int:
    """
    The XLA FFI traits (bit 0: command-buffer compatible) a handler capsule declares, by its metadata query.
    """

TRAIT_COMMAND_BUFFER_COMPATIBLE: int = 1

max_kernel_size: int = 32

def architectures() -> str:
    """
    The CUDA architectures compiled in, as CMAKE_CUDA_ARCHITECTURES named them (e.g. '80-real,90-virtual').
    """
