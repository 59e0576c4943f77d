"""EB-GAN (Zhao, Mathieu and LeCun, arXiv 1609.03126) for 28x28 MNIST in Flax NNX.

The discriminator is an auto-encoder whose reconstruction error is the energy: low on data, pushed above a
margin on samples. Both upsampling paths (the generator and the auto-encoder's decoder) use transposed
convolutions: `conv_transpose_cls` picks flax's or jaxseg's class, which take the same arguments.
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


class Upsampler(nnx.Module):
  """features -> dense -> 7x7x128 -> 14x14x64 -> 28x28x1, tanh (batch norm and ReLU between): the generator,
  and the decoder of the discriminator's auto-encoder."""

  def __init__(self, in_features, conv_transpose_cls, *, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_features, 7 * 7 * 128, rngs=rngs)
    self.bn0 = nnx.BatchNorm(7 * 7 * 128, momentum=0.9, rngs=rngs)
    self.up1 = upsample(conv_transpose_cls, 128, 64, rngs)
    self.bn1 = nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
    self.up2 = upsample(conv_transpose_cls, 64, 1, rngs)

  def __call__(self, z):
    h = nnx.relu(self.bn0(self.fc(z))).reshape(z.shape[0], 7, 7, 128)
    h = nnx.relu(self.bn1(self.up1(h)))
    return jnp.tanh(self.up2(h))


def Generator(conv_transpose_cls, *, rngs: nnx.Rngs) -> Upsampler:
  """latent -> 28x28x1 image."""
  return Upsampler(LATENT, conv_transpose_cls, rngs=rngs)


class Discriminator(nnx.Module):
  """Auto-encoder: strided-conv encoder to a code, the upsampling stack back to the image."""

  def __init__(self, conv_transpose_cls, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 64, (4, 4), (2, 2), padding=1, rngs=rngs)
    self.conv2 = nnx.Conv(64, 128, (4, 4), (2, 2), padding=1, rngs=rngs)
    self.bn2 = nnx.BatchNorm(128, momentum=0.9, rngs=rngs)
    self.enc = nnx.Linear(7 * 7 * 128, CODE, rngs=rngs)
    self.dec = Upsampler(CODE, conv_transpose_cls, rngs=rngs)

  def __call__(self, x):
    """Returns (per-example energy, code)."""
    h = nnx.leaky_relu(self.conv1(x), 0.2)
    h = nnx.leaky_relu(self.bn2(self.conv2(h)), 0.2)
    code = self.enc(h.reshape(x.shape[0], -1))
    recon = self.dec(code)
    energy = jnp.mean((recon - x) ** 2, axis=(1, 2, 3))
    return energy, code


def pulling_away(code):
  """Mean squared cosine similarity between distinct codes of a batch (the PT regulariser)."""
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


def g_loss(g: Generator, d: Discriminator, z, pt_weight):
  """L_G = D(G(z)) + pt_weight * PT."""
  fake = g(z)
  e_fake, code = d(fake)
  return jnp.mean(e_fake) + pt_weight * pulling_away(code), fake
