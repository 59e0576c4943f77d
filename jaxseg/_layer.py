"""The computation of a transposed-convolution layer, shared by jaxseg.linen and jaxseg.nnx: flax's meaning of
every argument (any number of batch axes, int/pair/str padding, 'CIRCULAR'), jaxseg's kernel underneath."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding

from jaxseg._conv import _feature_group_count, conv_transpose, torch_padding


def as_tuple(value, n: int) -> tuple[int, ...]:
  """None -> ones, an int -> repeated n times, a sequence -> a tuple."""
  if value is None:
    value = 1
  if isinstance(value, int):
    return (value,) * n
  return tuple(value)


def kernel_shape(kernel_size: Sequence[int], in_features: int, out_features: int, transpose_kernel: bool,
                 feature_group_count: int = 1):
  """The kernel's shape: (k..., in / G, out), or (k..., out / G, in) with transpose_kernel (PyTorch's grouped
  weight permuted); the groups split the last axis (see `jaxseg.conv_transpose`). Raises TypeError or ValueError
  unless G is a positive integer dividing both feature counts."""
  g = _feature_group_count(feature_group_count)
  for name, features in (("input", in_features), ("output", out_features)):
    if features % g:
      raise ValueError(f"feature_group_count={g} must divide the number of {name} features ({features})")
  if transpose_kernel:
    return tuple(kernel_size) + (out_features // g, in_features)
  return tuple(kernel_size) + (in_features // g, out_features)


def check_mask(mask, shape):
  if mask is not None and tuple(mask.shape) != tuple(shape):
    raise ValueError(f"mask must have the kernel's shape {tuple(shape)}, got {tuple(mask.shape)}")


def _wrap_circular(y, in_spatial, strides, transpose_kernel):
  """Folds the VALID output onto one period (input size x stride) per spatial axis, summing what overlaps."""
  for axis, (size, stride) in enumerate(zip(in_spatial, strides), start=1):
    period = size * stride
    extra = (period - y.shape[axis]) % (2 * period)  # pad up to a whole number of periods
    # Where the odd element goes sets the alignment; with transpose_kernel it mirrors a forward convolution.
    lo = extra // 2 if transpose_kernel else (extra + 1) // 2
    pads = [(0, 0)] * y.ndim
    pads[axis] = (lo, extra - lo)
    y = jnp.pad(y, pads)
    y = y.reshape(y.shape[:axis] + (-1, period) + y.shape[axis + 1:]).sum(axis=axis)
  return y


def apply(inputs, kernel, bias, *, kernel_size, strides, padding, kernel_dilation, transpose_kernel, precision,
          preferred_element_type, feature_group_count=1):
  """inputs (*batch, spatial..., features) -> (*batch, spatial'..., out_features)."""
  n = len(kernel_size)
  batch_shape = inputs.shape[:inputs.ndim - (n + 1)]
  x = inputs.reshape((-1,) + inputs.shape[len(batch_shape):])
  strides = as_tuple(strides, n)
  dilation = as_tuple(kernel_dilation, n)
  pads = canonicalize_padding(padding, n)
  circular = isinstance(pads, str) and pads == "CIRCULAR"
  y = conv_transpose(x, kernel, strides, "VALID" if circular else pads, rhs_dilation=dilation,
                     transpose_kernel=transpose_kernel, precision=precision,
                     preferred_element_type=preferred_element_type, feature_group_count=feature_group_count)
  if circular:
    y = _wrap_circular(y, x.shape[1:-1], strides, transpose_kernel)
  if bias is not None:
    y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
  return y.reshape(batch_shape + y.shape[1:])


def torch_module_args(kernel_size, stride, padding, output_padding, dilation, groups=1, features=()):
  """Module arguments that give PyTorch's ConvTranspose meaning of stride/padding/output_padding/dilation/groups.

  `features` holds (name, count) pairs that `groups` must divide (PyTorch's in_channels and out_channels). Raises
  TypeError or ValueError naming `groups` (PyTorch's name) where it is not a positive integer dividing them."""
  if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
    raise TypeError(f"groups must be an integer, got {groups!r}")
  if groups < 1:
    raise ValueError(f"groups must be >= 1, got {groups}")
  for name, count in features:
    if count % groups:
      raise ValueError(f"groups={groups} must divide {name} ({count})")
  n = len(kernel_size) if isinstance(kernel_size, Sequence) else 1
  ks = as_tuple(kernel_size, n)
  return dict(kernel_size=ks, strides=as_tuple(stride, n), kernel_dilation=as_tuple(dilation, n),
              padding=torch_padding(ks, padding, output_padding, dilation, stride=stride), transpose_kernel=True,
              feature_group_count=int(groups))


def with_keyword(parent, name: str, default, annotation):
  """`parent`'s signature with one keyword-only parameter more (before any **kwargs), for `__signature__`:
  help() and IDEs then show flax's or equinox's arguments rather than `(*args, **kwargs)`."""
  sig = inspect.signature(parent)
  params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
  extra = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
  params.append(extra)
  params += [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
  return sig.replace(parameters=params)


class ClassSignature:
  """A class's `__signature__`: its `__init__`'s without `self`. flax's nnx and equinox modules are made by a
  metaclass whose `__call__(*args, **kwargs)` hides `__init__` from `inspect.signature`, hence from help() and
  IDEs. On an instance, AttributeError: inspect then reads the instance's `__call__`."""

  def __get__(self, obj, cls):
    if obj is not None:
      raise AttributeError("__signature__")
    sig = inspect.signature(cls.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:])
