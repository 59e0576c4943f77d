"""`jaxseg.nnx.ConvTranspose`: a drop-in for `flax.nnx.ConvTranspose` computed by jaxseg's kernels."""

from __future__ import annotations

from flax import nnx

from jaxseg import _layer


class ConvTranspose(nnx.ConvTranspose):
  """`flax.nnx.ConvTranspose` with the computation done by `jaxseg.conv_transpose`.

  The constructor (arguments, defaults, `rngs`, metadata) and the parameters (`kernel`, `bias`, their shapes and
  initialisation) are flax's own, so swapping the class keeps a model's state and checkpoints::

    from jaxseg.nnx import ConvTranspose   # instead of flax.nnx.ConvTranspose

  See `torch_style` for PyTorch's meaning of padding.
  """

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
                        preferred_element_type=self.preferred_element_type)

  @classmethod
  def torch_style(cls, in_features, out_features, kernel_size, stride=1, padding=0, output_padding=0, dilation=1,
                  *, rngs, **kwargs):
    """A layer with PyTorch's `ConvTranspose{1,2,3}d` meaning of stride, padding, output_padding and dilation.

    The kernel has shape `(k..., out_features, in_features)`: a PyTorch weight `W` of shape `(in, out, k...)`
    loads as `W.permute(2, ..., 1, 0)`.
    """
    return cls(in_features, out_features, **_layer.torch_module_args(kernel_size, stride, padding, output_padding,
                                                                      dilation), rngs=rngs, **kwargs)
