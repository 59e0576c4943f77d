"""jaxseg CPU custom calls and phase geometry"""

from collections.abc import Sequence


def registrations() -> dict: ...

def passes() -> list: ...

def dtype_table() -> list: ...

max_spatial_dims: int = 8

def clear_buffer_cache() -> None:
    """Frees the packed-weight buffers kept between calls."""

def buffer_cache_bytes() -> int: ...

def selected_isa() -> str: ...

def kernel_builds() -> list[str]: ...

def effective_kernel_size(kernel: int, dilation: int) -> int: ...

def output_size(in_size: int, kernel: int, stride: int, dilation: int, pad_lo: int, pad_hi: int) -> int: ...

def string_padding(mode: str, effective_kernel: int, stride: int) -> tuple[int, int]: ...

def consistent_padding(effective_kernel: int, pad_lo: int, pad_hi: int) -> tuple[int, int]: ...

def gpu_plan_execute(pass_name: str, first: bytes, second: bytes, first_shape: Sequence[int], second_shape: Sequence[int], result_shape: Sequence[int], strides: Sequence[int], dilation: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int], transpose_kernel: bool, operand_dtype: str, result_dtype: str, precision: int = 0, path: str | None = None, multiprocessors: int = 132) -> tuple:
    """
    Runs one pass as the CUDA kernels' plan would on a GPU (emulated on the CPU, with its index checks); operands and result as raw bytes of canonical tensors. Returns (result bytes, plan description).
    """

def gpu_plan_describe(pass_name: str, first_shape: Sequence[int], second_shape: Sequence[int], result_shape: Sequence[int], strides: Sequence[int], dilation: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int], transpose_kernel: bool, operand_dtype: str, precision: int = 0, multiprocessors: int = 132) -> dict:
    """The plan the CUDA handler makes for this call (path, grid, splits)."""

def gpu_can_implement(pass_name: str, first_shape: Sequence[int], second_shape: Sequence[int], result_shape: Sequence[int], strides: Sequence[int], dilation: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int], transpose_kernel: bool) -> str:
    """
    Why the CUDA kernels cannot run this call, or an empty string when they can.
    """

def gpu_fast_divmod(divisor: int, values: Sequence[int]) -> list[tuple[int, int]]:
    """The plans' division by an invariant divisor: [(q, r)]."""

def torch_padding(kernel: int, padding: int, output_padding: int, dilation: int) -> tuple[int, int]: ...
