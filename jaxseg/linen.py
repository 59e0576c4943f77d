"""`jaxseg.linen.ConvTranspose`: a drop-in for `flax.linen.ConvTranspose` computed by jaxseg's kernels."""

from __future__ import annotations

import flax.linen as nn

from jaxseg import _layer


class ConvTranspose(nn.ConvTranspose):
  """`flax.linen.ConvTranspose` with the computation done by `jaxseg.conv_transpose`.

  The attributes, their defaults, the parameter names (`kernel`, `bias`), shapes and initialisation are flax's
  own (this class derives from it), so an existing model and its checkpoints work after changing the import::

    from jaxseg.linen import ConvTranspose   # instead of flax.linen.ConvTranspose

  One attribute more than flax's:

  Attributes:
    feature_group_count: G >= 1 (default 1, flax's layer): G independent transposed convolutions side by side,
      each from in_features / G inputs to features / G outputs (see `jaxseg.conv_transpose`). The kernel then
      has shape `(k..., in_features / G, features)`, or `(k..., features / G, in_features)` with
      `transpose_kernel` (PyTorch's grouped weight permuted); G must divide both feature counts.

  Example: a depthwise upsampling (one 4x4 filter per channel)::

    layer = jaxseg.linen.ConvTranspose(64, (4, 4), strides=(2, 2), feature_group_count=64)

  See `torch_style` for PyTorch's meaning of padding.
  """

  feature_group_count: int = 1

  @nn.compact
  def __call__(self, inputs):
    kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    shape = _layer.kernel_shape(kernel_size, inputs.shape[-1], self.features, self.transpose_kernel,
                                self.feature_group_count)
    _layer.check_mask(self.mask, shape)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    if self.mask is not None:
      kernel = kernel * self.mask
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    return _layer.apply(inputs, kernel, bias, kernel_size=kernel_size, strides=self.strides, padding=self.padding,
                        kernel_dilation=self.kernel_dilation, transpose_kernel=self.transpose_kernel,
                        precision=self.precision, preferred_element_type=self.preferred_element_type,
                        feature_group_count=self.feature_group_count)

  @classmethod
  def torch_style(cls, features, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                  **kwargs):
    """A layer with PyTorch's `ConvTranspose{1,2,3}d` meaning of stride, padding, output_padding, dilation and
    groups.

    The kernel then has shape `(k..., features / groups, in_features)`: a PyTorch weight `W` of shape
    `(in, out / groups, k...)` loads as `W.permute(2, ..., 1, 0)` (spatial axes first, then out, then in).

    The number of spatial axes is `len(kernel_size)`: unlike PyTorch's `ConvTranspose2d(..., 4, ...)`, an int
    `kernel_size` makes a 1-D layer, as in flax, so write `(4, 4)` for a 2-D one (a 1-D layer applied to an
    image treats its rows as more batch).
    """
    return cls(features=features, **_layer.torch_module_args(kernel_size, stride, padding, output_padding,
                                                             dilation, groups, features=(("features", features),)),
               **kwargs)
