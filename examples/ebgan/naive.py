"""The textbook transposed convolution, as a baseline: insert stride-1 zeros between input elements, then run a
stride-1 convolution over the enlarged input.

`ConvTranspose` here is `flax.nnx.ConvTranspose` (same constructor, parameters and result) computed that way, with
the zero-inserted input built explicitly, so the train step holds it and its gradient in memory: the cost that
kernel segregation (and the paper's memory comparison) is about.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from flax.linen.linear import canonicalize_padding
from jax import lax


def insert_zeros(x, strides):
  """x (N, spatial..., C) -> (N, (size - 1) * s + 1 ..., C): s - 1 zeros between neighbours along each spatial axis.

  Built as pad-then-reshape on a new axis rather than as `lax.pad` with interior padding, which XLA may fold back
  into the convolution as an input dilation (that is, into the non-naive form)."""
  for axis, s in enumerate(strides, start=1):
    if s == 1:
      continue
    size = x.shape[axis]
    x = jnp.expand_dims(x, axis + 1)  # (..., size, 1, ...)
    x = jnp.pad(x, [(0, 0)] * (axis + 1) + [(0, s - 1)] + [(0, 0)] * (x.ndim - axis - 2))  # (..., size, s, ...)
    x = x.reshape(x.shape[:axis] + (size * s,) + x.shape[axis + 2:])
    x = lax.slice_in_dim(x, 0, (size - 1) * s + 1, axis=axis)  # no zeros after the last element
  return x


def transpose_pads(padding, kernel_size, strides, dilation):
  """Explicit (low, high) pads of the zero-inserted input for 'SAME', 'VALID' or explicit pairs, with the meaning
  `jax.lax.conv_transpose` gives them."""
  if not isinstance(padding, str):
    return [tuple(p) for p in padding]
  pads = []
  for k, s, d in zip(kernel_size, strides, dilation):
    k = d * (k - 1) + 1  # the dilated kernel's extent
    if padding == "SAME":
      total = k + s - 2
      low = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == "VALID":
      total, low = k + s - 2 + max(k - s, 0), k - 1
    else:
      raise ValueError(f"naive ConvTranspose: padding {padding!r} is not supported")
    pads.append((low, total - low))
  return pads


class ConvTranspose(nnx.ConvTranspose):
  """`flax.nnx.ConvTranspose` computed as zero insertion followed by a stride-1 convolution (see the module doc).

  Inputs (*batch, spatial..., in_features) -> (*batch, spatial'..., out_features), as flax's; padding may be
  'SAME', 'VALID', an int or explicit pairs ('CIRCULAR' is not supported)."""

  def __call__(self, inputs):
    n = len(self.kernel_size)
    kernel = self.kernel[...]
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    batch_shape = inputs.shape[:inputs.ndim - (n + 1)]
    x = inputs.reshape((-1,) + inputs.shape[len(batch_shape):])
    strides = tuple(self.strides) if self.strides is not None else (1,) * n
    dilation = tuple(self.kernel_dilation) if self.kernel_dilation is not None else (1,) * n
    if self.transpose_kernel:  # (k..., out, in) in the forward convolution's orientation: flip and swap
      kernel = jnp.swapaxes(jnp.flip(kernel, tuple(range(n))), -1, -2)
    pads = transpose_pads(canonicalize_padding(self.padding, n), self.kernel_size, strides, dilation)
    spec = "".join(chr(ord("a") + i) for i in range(n))  # any distinct spatial letters
    y = lax.conv_general_dilated(insert_zeros(x, strides), kernel, (1,) * n, pads, rhs_dilation=dilation,
                                 dimension_numbers=(f"N{spec}C", f"{spec}IO", f"N{spec}C"),
                                 precision=self.precision, preferred_element_type=self.preferred_element_type)
    if bias is not None:
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape(batch_shape + y.shape[1:])
