"""How good are the generated digits: an Inception-style score and a Frechet distance, on a small MNIST classifier.

Both measures were defined on ImageNet's Inception network; for 28x28 digits the usual stand-in is a classifier
trained on MNIST itself, here a small CNN trained in under a minute on the labelled digits at hand (by default the
5,000-image subset, minus 1,000 held out). Its held-out accuracy says how far to trust it. The figures compare runs
scored by this evaluator (same data, same seed), not numbers from papers.

Inception score (Salimans et al., "Improved Techniques for Training GANs", arXiv 1606.03498, section 4)::

    IS = exp( E_x KL( p(y|x) || p(y) ) ),    p(y) = E_x p(y|x)

with p(y|x) the classifier's softmax for sample x and p(y) its mean over the samples. It lies between 1 and the
number of classes (10): high when every sample is classified confidently *and* the classes are used evenly.
Computed over all samples at once (the paper averages 10 splits of 5,000; we score 1,000 samples).

Frechet distance (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule...", arXiv 1706.08500, the "FID";
the distance between Gaussians is from Dowson and Landau, J. Multivariate Anal. 12, 1982)::

    d^2 = |mu_1 - mu_2|^2 + tr( S_1 + S_2 - 2 (S_1 S_2)^(1/2) )

between Gaussians (means mu, covariances S) fitted to the classifier's penultimate features of the samples and of
held-out real digits. 0 for identical statistics; lower is better.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data import Digits, to_unit_range

NUM_CLASSES = 10


class Classifier(nnx.Module):
  """(B, 28, 28, 1) images in [-1, 1] -> (B, 10) logits; `features` gives the (B, hidden) penultimate layer.

  Two 5x5 stride-2 convolutions (28 -> 14 -> 7) and a dense layer: about 3 M multiply-adds per image."""

  def __init__(self, width: int = 32, hidden: int = 128, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, width, (5, 5), (2, 2), rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (5, 5), (2, 2), rngs=rngs)
    self.fc = nnx.Linear(7 * 7 * 2 * width, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

  def features(self, x):
    """The (B, hidden) penultimate activations: the feature space of the Frechet distance."""
    h = nnx.relu(self.conv1(x))
    h = nnx.relu(self.conv2(h))
    return nnx.relu(self.fc(h.reshape(x.shape[0], -1)))

  def __call__(self, x):
    """(B, 10) logits."""
    return self.out(self.features(x))


def random_shift(key, x, max_shift: int):
  """Each image of x (B, H, W, C), background -1, moved by its own random offset of up to max_shift pixels."""
  m = max_shift
  padded = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
  offsets = jax.random.randint(key, (x.shape[0], 2), 0, 2 * m + 1)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), x.shape[1:])
  return jax.vmap(crop)(padded, offsets)


@nnx.jit
def _classifier_step(model, optimizer, x, y, key):
  def loss_fn(model):
    logits = model(random_shift(key, x, 2))  # shifted digits: generated ones are not always centred
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def train_classifier(images, labels, *, steps: int, batch_size: int = 128, seed: int = 0, width: int = 32,
                     hidden: int = 128) -> Classifier:
  """A Classifier trained with Adam (lr 1e-3) on (N, 28, 28, 1) images in [-1, 1] and int labels (N,)."""
  model = Classifier(width, hidden, rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  order = np.zeros(0, np.int64)
  for _ in range(steps):
    if len(order) < batch_size:  # epochs in a fresh random order
      order = np.concatenate([order, rng.permutation(len(images))])
    idx, order = order[:batch_size], order[batch_size:]
    key, sub = jax.random.split(key)
    _classifier_step(model, optimizer, images[idx], labels[idx], sub)
  return model


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
  model = nnx.merge(graphdef, state)
  return jax.nn.softmax(model(x)), model.features(x)


def classify(model: Classifier, images, chunk: int = 500):
  """(softmax (N, 10), penultimate features (N, hidden)) as float64 NumPy arrays, for images (N, 28, 28, 1)."""
  graphdef, state = nnx.split(model)
  probs, feats = zip(*(jax.device_get(_apply(graphdef, state, images[i:i + chunk]))
                       for i in range(0, len(images), chunk)))
  return np.concatenate(probs).astype(np.float64), np.concatenate(feats).astype(np.float64)


def inception_score(probs) -> float:
  """exp(E_x KL(p(y|x) || p(y))) for class probabilities p(y|x) of shape (N, classes)."""
  p_y = probs.mean(axis=0, keepdims=True)
  eps = 1e-12  # 0 * log 0 = 0
  kl = np.sum(probs * (np.log(probs + eps) - np.log(p_y + eps)), axis=1)
  return float(np.exp(kl.mean()))


def frechet_distance(feats_a, feats_b) -> float:
  """d^2 between Gaussians fitted to two feature sets of shape (N, D) (the FID formula above).

  tr (S_1 S_2)^(1/2) is the sum of the square roots of the eigenvalues of S_1 S_2, which are those of the
  symmetric S_1^(1/2) S_2 S_1^(1/2): `eigvalsh` of that gives them real and (after clipping rounding) >= 0,
  where a general matrix square root of the non-symmetric product can return complex parts from rounding."""
  mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
  s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
  w, v = np.linalg.eigh(s_a)
  root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * cross)


class Scores(NamedTuple):
  inception_score: float
  frechet_distance: float


class Evaluator:
  """A classifier trained on labelled digits, the features of held-out real digits, and `score(samples)`.

  The digits are split once (a fixed permutation): `held_out` of them are never trained on; they are the test set
  of the classifier and the real side of the Frechet distance. Attributes after construction: `held_out` (their
  number), `accuracy` (held-out, 0..1), `real` (the Scores of as many training digits against the held-out ones:
  what real data reaches at this sample size) and `seconds` (the time construction took)."""

  def __init__(self, digits: Digits, *, steps: int = 1000, held_out: int = 1000, seed: int = 0):
    t0 = time.perf_counter()
    if digits.labels is None:
      raise ValueError("the evaluator needs labelled digits")
    self.held_out = held_out = min(held_out, len(digits.images) // 2)
    order = np.random.default_rng(seed).permutation(len(digits.images))
    test, train = order[:held_out], order[held_out:]
    images = to_unit_range(digits.images)
    self.model = train_classifier(images[train], digits.labels[train], steps=steps, seed=seed)
    probs, self._real_feats = classify(self.model, images[test])
    self.accuracy = float(np.mean(probs.argmax(1) == digits.labels[test]))
    self.real = self.score(images[train[:held_out]])
    self.seconds = time.perf_counter() - t0

  def score(self, samples) -> Scores:
    """Scores of samples (N, 28, 28, 1) in [-1, 1] (or (N, 28, 28))."""
    samples = np.asarray(samples, np.float32).reshape(len(samples), 28, 28, 1)
    probs, feats = classify(self.model, samples)
    return Scores(inception_score(probs), frechet_distance(feats, self._real_feats))
