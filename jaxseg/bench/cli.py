"""`python -m jaxseg.bench` (also `jaxseg-bench`): jaxseg against XLA, the naive zero-insertion form and PyTorch.

For every layer of the suite (default: the transposed-convolution layers of real generative models shipped as
`jaxseg/bench/layers.json`; a layer's optional `groups` makes it grouped, for every implementation: XLA's is
then the grouped `lax.conv_general_dilated`, as `lax.conv_transpose` has no groups) and every pass (`forward`,
`input_grad`, `weight_grad`; `--passes` also takes `fwd`, `dx`, `dw`), it times each implementation jitted and
warmed up, as the median of repeated calls taken in interleaved rounds (so the machine's drifts reach every
implementation alike), all in one process, and prints ms, useful GFLOP/s, the
speed-up of jaxseg over each peer, the fraction of the machine's sgemm rate (measured in the same run) and the
compiled temp memory of jaxseg and XLA. On a GPU each timed slice is a run of back-to-back calls with one wait at
its end, so that a call's time is the device's rather than the host's round trip.

`python -m jaxseg.bench report FILE...` renders recorded files as the Markdown tables of the README and the docs
(`jaxseg/bench/report.py`).

JSON schema (`--json FILE`)::

  {"schema": "jaxseg-bench/3",                # /2 named the passes forward, input_grad, weight_grad; /3 adds
                                              # "provenance"
   "provenance": {"date",                     # ISO 8601, UTC, at the start of the run
                  "commit", "dirty",          # git HEAD of jaxseg's source tree (None outside a git checkout)
                  "cpu_flags",                # the CPU's vector and matrix units (from /proc/cpuinfo, as lscpu)
                  "cores_usable",             # the cores this process may run on (sched_getaffinity)
                  "load_average": {"start", "end"}},   # os.getloadavg(): 1, 5, 15 minutes
   "machine": {"platform", "device", "cpu", "cores", "isa"}, "versions": {"jax", "jaxlib", "jaxseg", "torch"},
   "config": {"dtype", "device", "repeats", "transpose_kernel", "layers_file", "timing"},
   "matmul_gflops": float,                     # measured sgemm (or bf16 gemm) rate, same run (8192^3 on GPU)
   "rows": [{"layer", "pass", "gflop",
             "ms": {"jaxseg", "xla", "naive", "torch"},     # medians; null where not run
             "gflops": float,                                 # jaxseg's useful GFLOP/s
             "fraction_of_matmul": float,
             "speedup_vs_xla", "speedup_vs_naive", "speedup_vs_torch", "speedup_vs_best_peer",
             "temp_bytes": {"jaxseg", "xla"},
             "xla_ops": [str]}]}                               # XLA's compiled convolution (cuDNN call on GPU)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxseg
from jaxseg import _passes
from jaxseg._conv import lax_kernel

PASSES = tuple(p.name for p in _passes.PASSES)  # forward, input_grad, weight_grad
# Short names --passes also takes.
PASS_ALIASES = {"fwd": "forward", "dx": "input_grad", "dw": "weight_grad"}
IMPLS = ("jaxseg", "xla", "naive", "torch")
# The /proc/cpuinfo flags that say which vector and matrix units a run had (what bounds its figures).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm",
             "sme")


def load_layers(path: str | None):
  text = open(path).read() if path else resources.files("jaxseg.bench").joinpath("layers.json").read_text()
  layers = json.loads(text)["layers"]
  for layer in layers:
    n = len(layer["kernel"])
    for key in ("in", "stride", "padding", "output_padding"):
      if len(layer[key]) != n:
        raise SystemExit(f"layer {layer['name']}: '{key}' needs {n} entries")
    groups = layer.setdefault("groups", 1)
    if groups < 1 or layer["c_in"] % groups or layer["c_out"] % groups:
      raise SystemExit(f"layer {layer['name']}: 'groups' ({groups}) must divide c_in and c_out")
  return layers


def layer_gflop(layer) -> float:
  """Useful multiply-adds (no inserted zeros): 2 * N * prod(in) * C_in * C_out * prod(kernel) / groups."""
  return (2 * layer["N"] * math.prod(layer["in"]) * layer["c_in"] * layer["c_out"] * math.prod(layer["kernel"])
          / layer["groups"] / 1e9)


def kernel_shape(layer, transpose_kernel):
  """(k..., C_out/G, C_in) in PyTorch's orientation, else (k..., C_in/G, C_out) (Flax's, lax's)."""
  g = layer["groups"]
  if transpose_kernel:
    return (*layer["kernel"], layer["c_out"] // g, layer["c_in"])
  return (*layer["kernel"], layer["c_in"] // g, layer["c_out"])


# ---------------------------------------------------------------------------------------------------------------
# The JAX implementations of one layer: (x, w) -> y with PyTorch's meaning (transpose_kernel=True), or Flax's.


def _jax_fns(layer, transpose_kernel):
  n = len(layer["kernel"])
  strides = tuple(layer["stride"])
  groups = layer["groups"]
  pads = jaxseg.torch_padding(layer["kernel"], layer["padding"], layer["output_padding"])
  spec = "HWD"[:n]
  dn = lax.conv_dimension_numbers((1,) * (n + 2), (1,) * (n + 2), (f"N{spec}C", f"{spec}IO", f"N{spec}C"))

  def ours(x, w):
    return jaxseg.conv_transpose(x, w, strides, pads, transpose_kernel=transpose_kernel, feature_group_count=groups)

  def xla(x, w):
    if groups == 1:
      return lax.conv_transpose(x, w, strides, pads, transpose_kernel=transpose_kernel)
    # lax.conv_transpose has no groups: the grouped convolution with lhs dilation that it would stand for.
    return lax.conv_general_dilated(x, lax_kernel(w, dn, transpose_kernel, groups), (1,) * n, pads,
                                    lhs_dilation=strides, dimension_numbers=dn, feature_group_count=groups)

  def naive(x, w):
    # Explicit zero insertion, then a stride-1 convolution over the dilated input.
    shape = (x.shape[0], *[(h - 1) * s + 1 for h, s in zip(x.shape[1:-1], strides)], x.shape[-1])
    xd = jnp.zeros(shape, x.dtype).at[(slice(None), *[slice(None, None, s) for s in strides])].set(x)
    return lax.conv_general_dilated(xd, lax_kernel(w, dn, transpose_kernel, groups), (1,) * n, pads,
                                    dimension_numbers=dn, feature_group_count=groups)

  return {"jaxseg": ours, "xla": xla, "naive": naive}


def _pass_fn(f, which):
  if which == "forward":
    return lambda x, w, ct: f(x, w)
  if which == "input_grad":
    return lambda x, w, ct: jax.vjp(lambda x: f(x, w), x)[1](ct)[0]
  return lambda x, w, ct: jax.vjp(lambda w: f(x, w), w)[1](ct)[0]


def _time(fns, rounds, budget_s, slice_s=0.02, gap_s=0.005, clock=time.perf_counter, sleep=time.sleep):
  """Median seconds per call of each of `fns` (name -> callable that blocks until its result is ready).

  Timed in rounds: a round times every implementation in turn, each for a few calls (about `slice_s`),
  starting from a different one each round, so a drift of the machine's speed (these machines move 10-15 %, at
  times far more, within a run) reaches all of them alike instead of one. At least 3 rounds, at most `rounds`,
  and none begun once `budget_s` per implementation has passed. The first call of each is a warm-up.

  Between two implementations the machine idles for `gap_s`: PyTorch's OpenMP workers spin on the cores for a
  while after each call, and an implementation timed right then pays for it (a 24 ms jaxseg call took 26-29 ms
  right after a PyTorch call, 24 ms from 1 ms after).

  `clock` and `sleep` are the timer and the idle (tests pass a fake clock).
  """
  names = list(fns)
  calls = {}
  for name in names:
    t0 = clock()
    fns[name]()
    calls[name] = max(1, min(50, int(slice_s / max(clock() - t0, 1e-6))))
  times = {name: [] for name in names}
  gc_enabled = gc.isenabled()
  gc.collect()
  gc.disable()  # a collection inside one call would be charged to that implementation alone
  try:
    start = clock()
    for r in range(rounds):
      if r >= 3 and clock() - start > budget_s * len(names):
        break
      for i in range(len(names)):
        name = names[(r + i) % len(names)]
        sleep(gap_s)
        for _ in range(calls[name]):
          t0 = clock()
          fns[name]()
          times[name].append(clock() - t0)
  finally:
    if gc_enabled:
      gc.enable()
  return {name: statistics.median(v) for name, v in times.items()}


def _batched(call, sync, calls):
  """`calls` back-to-back calls of `call`, then one wait for the last result. On a GPU the calls queue behind
  each other, so the time per call is the device's, not the host's round trip for each (tens of microseconds,
  as long as a small layer's kernel). On the CPU, calls=1."""
  def fn():
    out = None
    for _ in range(calls):
      out = call()
    sync(out)
  return fn


def _calls_per_wait(call, sync, gpu, target_s=2e-3):
  """How many calls `_batched` makes per wait: enough for about `target_s` on a GPU, 1 on the CPU."""
  if not gpu:
    return 1
  sync(call())
  t0 = time.perf_counter()
  sync(call())
  return max(1, min(200, int(target_s / max(time.perf_counter() - t0, 1e-6))))


def matmul_gflops(dtype, device, size=None, repeats=10):
  """The machine's matrix rate in `dtype`, measured here: 2048^3 on the CPU, 8192^3 on a GPU (batched calls)."""
  gpu = device.platform == "gpu"
  size = size or (8192 if gpu else 2048)
  a = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype), device)
  f = jax.jit(lambda a, b: a @ b)
  call = lambda: f(a, a)
  calls = _calls_per_wait(call, jax.block_until_ready, gpu)
  t = _time({"matmul": _batched(call, jax.block_until_ready, calls)}, repeats, 2.0)["matmul"] / calls
  return 2 * size**3 / t / 1e9


# ---------------------------------------------------------------------------------------------------------------
# PyTorch


def _torch_fns(layer, dtype, device, torch):
  n = len(layer["kernel"])
  cls = [torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d][n - 1]
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  tdev = "cuda" if device == "gpu" else "cpu"
  m = cls(layer["c_in"], layer["c_out"], layer["kernel"], layer["stride"], layer["padding"],
          layer["output_padding"], groups=layer["groups"], bias=False).to(device=tdev, dtype=tdtype)
  x = torch.randn(layer["N"], layer["c_in"], *layer["in"], device=tdev, dtype=tdtype)

  def forward():
    with torch.no_grad():
      return m(x)

  xg = x.clone().requires_grad_(True)
  m.weight.requires_grad_(False)
  y_dx = m(xg)
  ct = torch.randn_like(y_dx)

  def input_grad():
    return torch.autograd.grad(y_dx, xg, ct, retain_graph=True)

  m2 = cls(layer["c_in"], layer["c_out"], layer["kernel"], layer["stride"], layer["padding"],
           layer["output_padding"], groups=layer["groups"], bias=False).to(device=tdev, dtype=tdtype)
  y_dw = m2(x)

  def weight_grad():
    return torch.autograd.grad(y_dw, m2.weight, ct, retain_graph=True)

  # Each call returns at once on a GPU: the wait for it is separate (see _batched).
  sync = (lambda out: torch.cuda.synchronize()) if tdev == "cuda" else (lambda out: None)
  return {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad}, sync


# ---------------------------------------------------------------------------------------------------------------


def run(args, on_row=None):
  """The benchmark's result (the JSON schema above); `on_row(result)` is called with the rows so far after each
  row, so that a run cut short still leaves its rows."""
  try:
    device = jax.devices(args.device)[0]
  except RuntimeError as e:
    raise SystemExit(f"--device {args.device}: no such JAX device here ({e})") from None
  gpu = device.platform == "gpu"
  if gpu:  # the benchmark times jaxseg's own kernels, which are opt-in on GPUs (docs/gpu.md)
    jaxseg.use_gpu_kernels(True)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  torch = None
  if "torch" in args.impls:
    try:
      import torch  # noqa: F811
      if args.device == "gpu" and not torch.cuda.is_available():
        torch = None
    except ImportError:
      torch = None
  layers = load_layers(args.layers)
  if args.only:
    wanted = set(args.only.split(","))
    if unknown := sorted(wanted - {l["name"] for l in layers}):
      raise SystemExit(f"--only: no layer named {', '.join(unknown)} in "
                       f"{args.layers or 'the built-in suite'}; the layers are {', '.join(l['name'] for l in layers)}")
    layers = [l for l in layers if l["name"] in wanted]
  passes = args.passes
  started = _provenance()
  progress = _progress(len(layers) * len(passes), args.no_progress)
  gemm = matmul_gflops(dtype, device)
  rng = np.random.default_rng(0)
  rows = []
  result = {
      "schema": "jaxseg-bench/3",
      "provenance": started,
      "machine": {"platform": device.platform, "device": device.device_kind, "cpu": _cpu_name(),
                  "cores": os.cpu_count(), "isa": jaxseg._ext.cpu.selected_isa()},
      "versions": {"jax": jax.__version__, "jaxlib": _jaxlib_version(),
                   "jaxseg": jaxseg.__version__, "torch": getattr(torch, "__version__", None)},
      "config": {"dtype": args.dtype, "device": args.device, "repeats": args.repeats,
                 "transpose_kernel": args.transpose_kernel, "layers_file": args.layers or "builtin",
                 "timing": "back-to-back calls per wait" if gpu else "one call per wait"},
      "matmul_gflops": gemm,
      "rows": rows,
  }
  for layer in layers:
    n = len(layer["kernel"])
    x = jax.device_put(jnp.asarray(rng.standard_normal((layer["N"], *layer["in"], layer["c_in"])), dtype), device)
    w = jax.device_put(jnp.asarray(rng.standard_normal(kernel_shape(layer, args.transpose_kernel)) * 0.05, dtype),
                       device)
    fns = _jax_fns(layer, args.transpose_kernel)
    y_shape = jax.eval_shape(fns["jaxseg"], x, w).shape
    ct = jax.device_put(jnp.asarray(rng.standard_normal(y_shape), dtype), device)
    tfns, tsync = _torch_fns(layer, args.dtype, args.device, torch) if torch is not None and n <= 3 else (None, None)
    for which in passes:
      temp, xla_ops, calls_of = {}, None, {}
      for impl in ("jaxseg", "xla", "naive"):
        if impl not in args.impls:
          continue
        compiled = jax.jit(_pass_fn(fns[impl], which)).lower(x, w, ct).compile()
        mem = compiled.memory_analysis()
        temp[impl] = None if mem is None else int(mem.temp_size_in_bytes)
        if impl == "xla":  # what XLA made of it: its convolution, or on GPU which cuDNN call
          xla_ops = sorted(set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text())) or
                           ({"convolution"} if re.search(r"\bconvolution\(", compiled.as_text()) else set()))
        calls_of[impl] = (lambda compiled=compiled: compiled(x, w, ct)), jax.block_until_ready
      if tfns:
        calls_of["torch"] = tfns[which], tsync
      per_wait = {impl: _calls_per_wait(call, sync, gpu) for impl, (call, sync) in calls_of.items()}
      timed = {impl: _batched(call, sync, per_wait[impl]) for impl, (call, sync) in calls_of.items()}
      medians = _time(timed, args.repeats, args.budget)
      ms = {impl: (1e3 * medians[impl] / per_wait[impl] if impl in medians else None) for impl in IMPLS}
      gflop = layer_gflop(layer)
      gflops = gflop / (ms["jaxseg"] / 1e3) if ms.get("jaxseg") else None
      speed = {f"speedup_vs_{p}": (ms[p] / ms["jaxseg"] if ms.get(p) and ms.get("jaxseg") else None)
               for p in ("xla", "naive", "torch")}
      best = [ms[p] for p in ("xla", "torch") if ms.get(p)]
      row = {"layer": layer["name"], "pass": which, "gflop": gflop, "ms": ms, "gflops": gflops,
             "fraction_of_matmul": gflops / gemm if gflops else None, **speed,
             "speedup_vs_best_peer": (min(best) / ms["jaxseg"]) if best and ms.get("jaxseg") else None,
             "temp_bytes": {"jaxseg": temp.get("jaxseg"), "xla": temp.get("xla")}, "xla_ops": xla_ops}
      rows.append(row)
      if started["load_average"]:
        started["load_average"]["end"] = _load_average() or started["load_average"]["end"]
      if on_row is not None:
        on_row(result)
      progress(f"{layer['name']} {which}")
  progress(None)
  return result


def _load_average():
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:  # not on every platform
    return None


def _git(*args):
  import subprocess

  src = os.path.dirname(os.path.dirname(os.path.abspath(jaxseg.__file__)))

  def git(*a):
    try:
      out = subprocess.run(["git", "-C", src, *a], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
      return None
    return out.stdout.strip() if out.returncode == 0 else None

  # Only jaxseg's own checkout (an editable install) says which code ran: an installed wheel's site-packages may
  # sit inside some other repository (a venv in the user's project), whose commit is not ours.
  top = git("rev-parse", "--show-toplevel")
  if top is None or not os.path.samefile(top, src) or not os.path.isfile(os.path.join(src, "jaxseg", "__init__.py")):
    return None
  return git(*args)


def _cpu_flags():
  """The CPU_FLAGS this CPU has, in CPU_FLAGS' order; None where /proc/cpuinfo does not say."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          have = set(line.split(":", 1)[1].split())
          return [flag for flag in CPU_FLAGS if flag in have]
  except OSError:
    pass
  return None


def _provenance():
  """When and where a run starts: the date, jaxseg's git commit, the CPU's units, the load; the end load is
  updated after each row."""
  import datetime

  # An installed wheel knows no commit: JAXSEG_COMMIT names the one it was built from (as benchmarks/gpu.sh does).
  commit = os.environ.get("JAXSEG_COMMIT") or _git("rev-parse", "HEAD")
  # Tracked files only: a local change to the code measured is worth knowing, untracked results are not.
  dirty = None if commit is None or "JAXSEG_COMMIT" in os.environ else \
      bool(_git("status", "--porcelain", "--untracked-files=no"))
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  load = _load_average()
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "commit": commit, "dirty": dirty, "cpu_flags": _cpu_flags(), "cores_usable": usable,
          "load_average": None if load is None else {"start": load, "end": load}}


def _jaxlib_version():
  import jaxlib

  return getattr(jaxlib, "__version__", None)


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _progress(total, disabled):
  try:
    from tqdm import tqdm
  except ImportError:
    tqdm = None
  if disabled:
    return lambda msg: None
  if tqdm is not None:
    bar = tqdm(total=total, file=sys.stderr, desc="bench")

    def update(msg):
      if msg is None:
        bar.close()
      else:
        bar.set_postfix_str(msg)
        bar.update()

    return update
  count = [0]

  def update(msg):
    if msg is not None:
      count[0] += 1
      print(f"[{count[0]}/{total}] {msg}", file=sys.stderr, flush=True)

  return update


def _fmt(v, spec):
  return format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0])


def print_table(result, out=None):
  out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
  m = result["machine"]
  print(f"jaxseg bench: {m['device']} ({m['cpu']}, {m['cores']} cores, kernels {m['isa']}), "
        f"{result['config']['dtype']}, jax {result['versions']['jax']}, torch {result['versions']['torch']}; "
        f"matmul {result['matmul_gflops']:.1f} GFLOP/s", file=out)
  head = (f"{'layer':17s} {'pass':11s} {'GFLOP':>6s} {'jaxseg':>8s} {'xla':>8s} {'naive':>8s} {'torch':>8s} "
          f"{'GFLOP/s':>8s} {'%mm':>5s} {'vs xla':>7s} {'vs naive':>8s} {'vs torch':>8s} {'tmp MiB ours/xla':>17s}")
  print(head, file=out)
  print("-" * len(head), file=out)
  for r in result["rows"]:
    ms = r["ms"]
    t = r["temp_bytes"]
    mem = (f"{t['jaxseg'] / 2**20:.1f}/{t['xla'] / 2**20:.1f}" if t.get("jaxseg") is not None and
           t.get("xla") is not None else "-")
    frac = 100 * r["fraction_of_matmul"] if r["fraction_of_matmul"] else None
    print(f"{r['layer']:17s} {r['pass']:11s} {r['gflop']:6.2f} {_fmt(ms['jaxseg'], '8.2f')} {_fmt(ms['xla'], '8.2f')} "
          f"{_fmt(ms['naive'], '8.2f')} {_fmt(ms['torch'], '8.2f')} {_fmt(r['gflops'], '8.1f')} {_fmt(frac, '5.0f')} "
          f"{_fmt(r['speedup_vs_xla'], '7.2f')} {_fmt(r['speedup_vs_naive'], '8.2f')} "
          f"{_fmt(r['speedup_vs_torch'], '8.2f')} {mem:>17s}", file=out)
  for key in ("speedup_vs_xla", "speedup_vs_torch", "speedup_vs_best_peer"):
    vals = [r[key] for r in result["rows"] if r[key]]
    if vals:
      print(f"geomean {key}: {math.exp(statistics.fmean(map(math.log, vals))):.2f}x over {len(vals)} rows",
            file=out)


def plot(result, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = result["rows"]
  labels = [f"{r['layer']}\n{r['pass']}" for r in rows]
  peers = [p for p in ("xla", "naive", "torch") if any(r[f"speedup_vs_{p}"] for r in rows)]
  fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 4.5))
  width = 0.8 / max(len(peers), 1)
  for i, p in enumerate(peers):
    vals = [r[f"speedup_vs_{p}"] or 0 for r in rows]
    ax.bar(np.arange(len(rows)) + (i - (len(peers) - 1) / 2) * width, vals, width, label=f"vs {p}")
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_yscale("log")
  ax.set_ylabel("jaxseg speed-up (x)")
  ax.set_xticks(np.arange(len(rows)), labels, rotation=90, fontsize=7)
  ax.legend()
  ax.set_title(f"jaxseg on {result['machine']['device']}, {result['config']['dtype']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["report"]:
    from jaxseg.bench import report

    raise SystemExit(report.main(argv[1:]))
  p = argparse.ArgumentParser(prog="python -m jaxseg.bench", description=__doc__.split("\n\n")[0],
                              epilog="python -m jaxseg.bench report --help: Markdown tables of recorded runs",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", help="layer suite JSON (default: the built-in suite)")
  p.add_argument("--only", help="comma-separated layer names")
  p.add_argument("--passes", default=",".join(PASSES),
                 help="comma-separated of forward, input_grad, weight_grad (or fwd, dx, dw)")
  p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated of jaxseg, xla, naive, torch")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--flax-kernel", dest="transpose_kernel", action="store_false",
                 help="time transpose_kernel=False (Flax's default) instead of PyTorch's orientation")
  p.add_argument("--repeats", type=int, default=15,
                 help="at most this many timing rounds (at least 3); each round times every implementation in turn")
  p.add_argument("--budget", type=float, default=1.0,
                 help="seconds of timing per implementation and row, after which no round begins (beyond 3)")
  p.add_argument("--json", help="write the results here")
  p.add_argument("--plot", help="write a PNG of grouped speed-up bars here")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  args.impls = tuple(args.impls.split(","))
  args.passes = [PASS_ALIASES.get(name, name) for name in args.passes.split(",")]
  if bad := set(args.passes) - set(PASSES):
    p.error(f"--passes: unknown pass {sorted(bad)} (choose from {', '.join(PASSES)}, or {', '.join(PASS_ALIASES)})")
  if bad := set(args.impls) - set(IMPLS):
    p.error(f"unknown implementation {sorted(bad)}")
  if args.repeats < 3:
    p.error("--repeats must be >= 3")
  def write(result):
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)

  result = run(args, on_row=write if args.json else None)
  print_table(result)
  if args.json:
    write(result)
  if args.plot:
    plot(result, args.plot)


if __name__ == "__main__":
  main()
