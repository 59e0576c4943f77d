"""`jaxseg.nnx.ConvTranspose`: a drop-in for `flax.nnx.ConvTranspose` computed by jaxseg's kernels."""

from __future__ import annotations

import inspect

from flax import nnx

from jaxseg import _layer

# The initializer flax's layer uses when given none; a grouped kernel is drawn from it with its own shape.
_DEFAULT_KERNEL_INIT = inspect.signature(nnx.ConvTranspose.__init__).parameters["kernel_init"].default


class ConvTranspose(nnx.ConvTranspose):
  """`flax.nnx.ConvTranspose` with the computation done by `jaxseg.conv_transpose`.

  The constructor (arguments, defaults, `rngs`, metadata) and the parameters (`kernel`, `bias`, their shapes and
  initialisation) are flax's own, so swapping the class keeps a model's state and checkpoints::

    from jaxseg.nnx import ConvTranspose   # instead of flax.nnx.ConvTranspose

  One keyword argument more than flax's:

  Args:
    feature_group_count: G >= 1 (default 1, flax's layer): G independent transposed convolutions side by side,
      each from in_features / G inputs to out_features / G outputs (see `jaxseg.conv_transpose`). The kernel
      then has shape `(k..., in_features / G, out_features)`, or `(k..., out_features / G, in_features)` with
      `transpose_kernel` (PyTorch's grouped weight permuted), drawn from `kernel_init` with that shape. Raises
      TypeError unless G is an integer, ValueError unless it is positive and divides both feature counts.

  Example: a depthwise upsampling (one 4x4 filter per channel)::

    layer = jaxseg.nnx.ConvTranspose(64, 64, (4, 4), (2, 2), feature_group_count=64, rngs=nnx.Rngs(0))

  See `torch_style` for PyTorch's meaning of padding.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size, strides=None, *,
               feature_group_count: int = 1, rngs: nnx.Rngs, **kwargs):
    kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    shape = _layer.kernel_shape(kernel_size, in_features, out_features, kwargs.get("transpose_kernel", False),
                                feature_group_count)
    if feature_group_count != 1:
      # flax's constructor asks for the ungrouped shape; draw the grouped kernel instead, from the same key.
      init = kwargs.get("kernel_init", _DEFAULT_KERNEL_INIT)
      kwargs["kernel_init"] = lambda key, _, dtype: init(key, shape, dtype)
    super().__init__(in_features, out_features, kernel_size, strides, rngs=rngs, **kwargs)
    self.kernel_shape = shape
    self.feature_group_count = feature_group_count

  # flax's arguments and ours, for help() and IDEs (the code above takes flax's through **kwargs).
  __init__.__signature__ = _layer.with_keyword(nnx.ConvTranspose.__init__, "feature_group_count", 1, int)
  __signature__ = _layer.ClassSignature()

  def __call__(self, inputs):
    _layer.check_mask(self.mask, self.kernel_shape)
    kernel = self.kernel[...]
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    return _layer.apply(inputs, kernel, bias, kernel_size=self.kernel_size, strides=self.strides,
                        padding=self.padding, kernel_dilation=self.kernel_dilation,
                        transpose_kernel=self.transpose_kernel, precision=self.precision,
                        preferred_element_type=self.preferred_element_type,
                        feature_group_count=self.feature_group_count)

  @classmethod
  def torch_style(cls, in_features, out_features, kernel_size, stride=1, padding=0, output_padding=0, dilation=1,
                  groups=1, *, rngs, **kwargs):
    """A layer with PyTorch's `ConvTranspose{1,2,3}d` meaning of stride, padding, output_padding, dilation and
    groups.

    The kernel has shape `(k..., out_features / groups, in_features)`: a PyTorch weight `W` of shape
    `(in, out / groups, k...)` loads as `W.permute(2, ..., 1, 0)`.

    The number of spatial axes is `len(kernel_size)`: unlike PyTorch's `ConvTranspose2d(..., 4, ...)`, an int
    `kernel_size` makes a 1-D layer, as in nnx.ConvTranspose, so write `(4, 4)` for a 2-D one (a 1-D layer
    applied to an image treats its rows as more batch).
    """
    args = _layer.torch_module_args(kernel_size, stride, padding, output_padding, dilation, groups,
                                    features=(("in_features", in_features), ("out_features", out_features)))
    return cls(in_features, out_features, **args, rngs=rngs, **kwargs)
