"""EB-GAN (Zhao, Mathieu and LeCun, arXiv 1609.03126) for 28x28 MNIST in Flax NNX.

The discriminator is an auto-encoder whose reconstruction error is the energy: low on data, pushed up to a margin on
samples. The layers are those of the widely used MNIST EB-GAN reproductions (the generator is InfoGAN's, Chen et al.
arXiv 1606.03657; the auto-encoder a one-layer convolutional encoder with a 32-dimensional code): in their notation
G = FC1024_BR-FC7x7x128_BR-(64)4dc2s_BR-(1)4dc2s_T and D = (64)4c2s_R-FC32-FC64x14x14_BR-(1)4dc2s (BR: batch norm
then ReLU; T: tanh). Both upsampling paths (the generator's and the decoder's) use transposed convolutions:
`conv_transpose_cls` is flax's, jaxseg's or the naive class, which take the same arguments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import jaxseg

LATENT = 62
CODE = 32


def upsample(conv_transpose_cls, c_in, c_out, rngs):
  """x2 upsampling with the geometry of PyTorch's ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1).

  The kernel keeps flax's orientation (transpose_kernel=False): its default initialiser then takes the fan-in
  from the input channels. (With transpose_kernel=True the kernel is (k, k, out, in) and the fan-in would come
  from the output channels, which starts the 64 -> 1 layer with weights 8x too large.)"""
  return conv_transpose_cls(c_in, c_out, (4, 4), (2, 2), padding=jaxseg.torch_padding((4, 4), 1), rngs=rngs)


def _bn(features, rngs):
  return nnx.BatchNorm(features, momentum=0.9, rngs=rngs)


class Generator(nnx.Module):
  """(B, 62) latents -> (B, 28, 28, 1) images in [-1, 1]: dense 1024 -> dense 7x7x128 -> 14x14x64 -> 28x28x1,
  batch norm and ReLU after every layer but the last (tanh)."""

  def __init__(self, conv_transpose_cls, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(LATENT, 1024, rngs=rngs)
    self.bn1 = _bn(1024, rngs)
    self.fc2 = nnx.Linear(1024, 7 * 7 * 128, rngs=rngs)
    self.bn2 = _bn(7 * 7 * 128, rngs)
    self.up1 = upsample(conv_transpose_cls, 128, 64, rngs)
    self.bn3 = _bn(64, rngs)
    self.up2 = upsample(conv_transpose_cls, 64, 1, rngs)

  def __call__(self, z):
    h = nnx.relu(self.bn1(self.fc1(z)))
    h = nnx.relu(self.bn2(self.fc2(h))).reshape(z.shape[0], 7, 7, 128)
    h = nnx.relu(self.bn3(self.up1(h)))
    return jnp.tanh(self.up2(h))


class Discriminator(nnx.Module):
  """Auto-encoder: (B, 28, 28, 1) -> 14x14x64 -> the (B, 32) code -> 14x14x64 -> the reconstruction.

  The code has neither batch norm nor an activation: the pulling-away term measures the angles between codes.
  The reconstruction is linear (no tanh), so the energy of a sample can grow past any margin."""

  def __init__(self, conv_transpose_cls, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 64, (4, 4), (2, 2), padding=1, rngs=rngs)
    self.enc = nnx.Linear(14 * 14 * 64, CODE, rngs=rngs)
    self.dec = nnx.Linear(CODE, 14 * 14 * 64, rngs=rngs)
    self.bn = _bn(14 * 14 * 64, rngs)
    self.up = upsample(conv_transpose_cls, 64, 1, rngs)

  def __call__(self, x):
    """Returns (per-example energy (B,): mean squared reconstruction error per pixel, code (B, 32))."""
    n = x.shape[0]
    code = self.enc(nnx.relu(self.conv(x)).reshape(n, -1))
    recon = self.up(nnx.relu(self.bn(self.dec(code))).reshape(n, 14, 14, 64))
    energy = jnp.mean((recon - x) ** 2, axis=(1, 2, 3))
    return energy, code


def pulling_away(code):
  """Mean squared cosine similarity between distinct codes of a batch (the PT regulariser, section 2.4)."""
  s = code / (jnp.linalg.norm(code, axis=1, keepdims=True) + 1e-8)
  sim = (s @ s.T) ** 2
  n = code.shape[0]
  return (jnp.sum(sim) - jnp.sum(jnp.diag(sim))) / (n * (n - 1))


def d_loss(d: Discriminator, real, fake, margin):
  """L_D = D(x) + max(0, m - D(G(z)))."""
  e_real, _ = d(real)
  e_fake, _ = d(jax.lax.stop_gradient(fake))
  loss = jnp.mean(e_real) + jnp.mean(jnp.maximum(0.0, margin - e_fake))
  return loss, (jnp.mean(e_real), jnp.mean(e_fake))


def g_loss(d: Discriminator, fake, pt_weight):
  """L_G = D(G(z)) + pt_weight * PT, as a function of the samples G(z) (the caller carries it back through G)."""
  e_fake, code = d(fake)
  return jnp.mean(e_fake) + pt_weight * pulling_away(code), e_fake
