"""`jaxseg.equinox.ConvTranspose`: a drop-in for `equinox.nn.ConvTranspose` computed by jaxseg's kernels.

Needs equinox (`pip install equinox`, or the `equinox` extra from the clone: `pip install ".[equinox]"`);
`import jaxseg` does not.
"""

from __future__ import annotations

try:
  import equinox as eqx
except ImportError as e:  # pragma: no cover - exercised by a test with equinox hidden
  raise ImportError("jaxseg.equinox needs equinox: pip install equinox") from e
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg._conv import conv_transpose


def _channels_first(n: int) -> lax.ConvDimensionNumbers:
  """NCH.../OIH.../NCH..., what `lax.conv_general_dilated` assumes without dimension numbers (equinox's call)."""
  iota = tuple(range(n + 2))
  return lax.ConvDimensionNumbers(iota, iota, iota)


class ConvTranspose(eqx.nn.ConvTranspose):
  """`equinox.nn.ConvTranspose` with the computation done by `jaxseg.conv_transpose`.

  The constructor is equinox's own (this class derives from it): the same arguments and defaults
  (`num_spatial_dims, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, dilation=1,
  groups=1, use_bias=True, padding_mode='ZEROS', dtype=None, *, key`), the same errors, and the same fields,
  so the same key gives bitwise the same `weight` (out_channels, in_channels / groups, k...) and `bias`
  (out_channels, 1, ...), and a serialised equinox model loads into this class unchanged::

    from jaxseg.equinox import ConvTranspose2d   # instead of equinox.nn.ConvTranspose2d

    layer = ConvTranspose2d(64, 32, 4, stride=2, padding=1, key=jax.random.key(0))
    y = jax.vmap(layer)(x)                     # x (N, 64, H, W) -> y (N, 32, 2H, 2W)

  The call is equinox's: an unbatched, channels-first `x` of shape (in_channels, dim_1, ..., dim_N) (vmap it
  for a batch; the mapped axis folds into the kernels' batch), giving (out_channels, new_dim_1, ..., new_dim_N).
  Every configuration equinox's layer accepts gives its result: `padding` as an int, per-axis ints,
  (low, high) pairs, 'VALID', 'SAME' or 'SAME_LOWER' (read as the padding of the equivalent `equinox.nn.Conv`),
  `output_padding`, `dilation`, `groups` (`feature_group_count`), and the padding modes 'ZEROS' and 'CIRCULAR'
  (equinox's constructor rejects 'REFLECT' and 'REPLICATE' for a transposed convolution, and so does this one).
  Channels-first operands are transposed to channels-last around jaxseg's kernels (a copy of each).

  Raises:
    ValueError: if `x` does not have rank num_spatial_dims + 1, or its channels differ from `in_channels`.
  """

  def _transposed_padding(self) -> tuple[tuple[int, int], ...]:
    """The explicit (low, high) padding of the dilated input that equinox's layer passes to
    `lax.conv_general_dilated`: with (p0, p1) the padding of the equivalent forward convolution and a the output
    padding, (d(k-1) - p0, d(k-1) - p1 + a) (Dumoulin and Visin, arXiv 1603.07285, relationship 14)."""
    pads = []
    for i, (k, s, d, a) in enumerate(zip(self.kernel_size, self.stride, self.dilation, self.output_padding)):
      span = d * (k - 1)
      if self.padding == "VALID":
        p0, p1 = 0, 0
      elif isinstance(self.padding, str):  # 'SAME' / 'SAME_LOWER': an output of input size x stride, less a
        total = span + 1 - s + a  # the forward convolution's padding; below 0 the output grows at the end
        p0 = max(total + (self.padding == "SAME_LOWER"), 0) // 2
        p1, a = total - p0, 0
      else:
        p0, p1 = self.padding[i]
      pads.append((span - p0, span - p1 + a))
    return tuple(pads)

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    """Applies the layer to one example.

    Args:
      x: (in_channels, dim_1, ..., dim_N), N = num_spatial_dims.
      key: ignored (equinox's calling convention).

    Returns:
      (out_channels, new_dim_1, ..., new_dim_N), in x's dtype (which must be the weight's).
    """
    del key
    n = self.num_spatial_dims
    if x.ndim != n + 1:
      raise ValueError(f"Input to `ConvTranspose` needs to have rank {n + 1}, but input has shape {x.shape}.")
    if x.shape[0] != self.in_channels:
      raise ValueError(f"Input to `ConvTranspose` has {x.shape[0]} channels, the layer {self.in_channels}.")
    with jax.named_scope("jaxseg.equinox.ConvTranspose"):
      pads = self._transposed_padding()
      if self.padding_mode == "CIRCULAR":
        # A pad of p on the dilated input is p // s whole input elements and p % s inserted zeros; the whole
        # elements are taken periodically from the other end, which gives the circular connectivity.
        x = jnp.pad(x, [(0, 0)] + [(lo // s, hi // s) for (lo, hi), s in zip(pads, self.stride)], mode="wrap")
        pads = tuple((lo % s, hi % s) for (lo, hi), s in zip(pads, self.stride))
      y = conv_transpose(x[None], self.weight, self.stride, pads, rhs_dilation=self.dilation,
                         dimension_numbers=_channels_first(n), feature_group_count=self.groups)[0]
      if self.use_bias:
        y = y + self.bias
      return y


class ConvTranspose1d(ConvTranspose, eqx.nn.ConvTranspose1d):
  """As `ConvTranspose` with num_spatial_dims=1: `equinox.nn.ConvTranspose1d`'s constructor, jaxseg's call."""


class ConvTranspose2d(ConvTranspose, eqx.nn.ConvTranspose2d):
  """As `ConvTranspose` with num_spatial_dims=2: `equinox.nn.ConvTranspose2d`'s constructor, jaxseg's call."""


class ConvTranspose3d(ConvTranspose, eqx.nn.ConvTranspose3d):
  """As `ConvTranspose` with num_spatial_dims=3: `equinox.nn.ConvTranspose3d`'s constructor, jaxseg's call."""


__all__ = ["ConvTranspose", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
