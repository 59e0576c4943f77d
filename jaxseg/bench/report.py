"""`python -m jaxseg.bench report`: Markdown tables from recorded `python -m jaxseg.bench --json` files.

Every benchmark table of the README and the docs is this command's output, between two markers that hold the
command's arguments::

  <!-- bench report: benchmarks/results/cpu-epyc-zen4-2core.json --naive benchmarks/results/x.json -->
  ...generated...
  <!-- end bench report -->

`--update FILE...` regenerates those blocks in place; `--check FILE...` exits 1, naming the file, where a block is
not what the recorded JSON gives (tests/test_bench.py runs it on the README and docs/). Paths inside a marker are
relative to the repository root (`--root`, default the current directory).

This module needs nothing but the standard library: the docs build and the tests read it without jax.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys

SCHEMAS = ("jaxseg-bench/2", "jaxseg-bench/3")  # /3 adds "provenance" (date, commit, CPU flags, load)
PASSES = ("forward", "input_grad", "weight_grad")
BEGIN = re.compile(r"<!-- bench report: (?P<args>.*?) -->\n")
END = "<!-- end bench report -->"


def load(path: str) -> dict:
  """A recorded result; raises ValueError, naming the file, if it is not a jaxseg bench result."""
  with open(path) as f:
    result = json.load(f)
  if not isinstance(result, dict) or result.get("schema") not in SCHEMAS:
    raise ValueError(f"{path}: not a jaxseg bench result (schema {result.get('schema')!r}, expected one of "
                     f"{SCHEMAS})" if isinstance(result, dict) else f"{path}: not a jaxseg bench result")
  return result


def geomean(values) -> float | None:
  values = [v for v in values if v]
  return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _f(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def _load_text(load) -> str:
  if not load:
    return "load average not recorded"
  return f"load average {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end (1-minute)"


def provenance(result: dict) -> str:
  """One sentence: when, on what code and machine, with which versions and how loaded a run was recorded."""
  m, v, p = result["machine"], result["versions"], result.get("provenance") or {}
  date = (p.get("date") or "date not recorded")[:10]
  commit = p.get("commit")
  commit = f"commit {commit[:7]}{' (with local changes)' if p.get('dirty') else ''}" if commit else \
      "commit not recorded"
  flags = p.get("cpu_flags")
  matrix = f"; matrix/vector units: {', '.join(flags)}" if flags else ""
  torch = f", torch {v['torch']}" if v.get("torch") else ""
  mm = result.get("matmul_gflops")
  rate = f"; {result['config']['dtype']} matmul {mm:.0f} GFLOP/s in the same run" if mm else ""
  note = f" {p['note']}" if p.get("note") else ""
  return (f"Recorded {date}, {commit}, on {m['device']} ({m['cpu']}, {m['cores']} cores{matrix}), kernels "
          f"{m['isa']}; {result['config']['dtype']}; jax {v['jax']}, jaxlib {v.get('jaxlib')}{torch}{rate}; "
          f"{_load_text(p.get('load_average'))}.{note}")


def full_table(result: dict, naive: dict | None = None) -> list[str]:
  """The per-row table (ms, GFLOP/s, speed-ups, temp memory) and its geometric means, as Markdown lines.

  `naive` is another recorded run whose `speedup_vs_naive` fills the "x naive" column (its naive ms over its
  own jaxseg ms) where this run did not time the naive form."""
  naive_rows = {(r["layer"], r["pass"]): r for r in naive["rows"]} if naive else {}
  lines = ["| layer | pass | jaxseg ms | XLA ms | torch ms | GFLOP/s | x XLA | x torch | x naive | "
           "temp MiB ours/XLA |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    ms, t = r["ms"], r["temp_bytes"]
    vs_naive = r.get("speedup_vs_naive")
    if vs_naive is None and (r["layer"], r["pass"]) in naive_rows:
      vs_naive = naive_rows[r["layer"], r["pass"]].get("speedup_vs_naive")
    mem = (f"{t['jaxseg'] / 2**20:.1f} / {t['xla'] / 2**20:.1f}"
           if t.get("jaxseg") is not None and t.get("xla") is not None else "-")
    lines.append(f"| {r['layer']} | {r['pass']} | {_f(ms.get('jaxseg'), '.2f')} | {_f(ms.get('xla'), '.2f')} | "
                 f"{_f(ms.get('torch'), '.2f')} | {_f(r.get('gflops'), '.0f')} | "
                 f"{_f(r.get('speedup_vs_xla'), '.2f')} | {_f(r.get('speedup_vs_torch'), '.2f')} | "
                 f"{_f(vs_naive, '.1f')} | {mem} |")
  return lines


def summary(result: dict) -> list[str]:
  """Geometric-mean speed-ups of jaxseg over each peer, in all and per pass (above 1: jaxseg faster)."""
  rows = result["rows"]
  out = []
  for key, name in (("speedup_vs_xla", "XLA"), ("speedup_vs_torch", "PyTorch"),
                    ("speedup_vs_best_peer", "the best peer")):
    g = geomean(r.get(key) for r in rows)
    if g:
      out.append(f"- geometric mean speed-up over {name}: {g:.2f}x ({sum(1 for r in rows if r.get(key))} rows)")
  for which in PASSES:
    sub = [r for r in rows if r["pass"] == which]
    xla, torch = geomean(r.get("speedup_vs_xla") for r in sub), geomean(r.get("speedup_vs_torch") for r in sub)
    if sub:
      out.append(f"- {which}: {_f(xla, '.2f')}x XLA, {_f(torch, '.2f')}x PyTorch")
  return out


def headline(results: list[tuple[str, dict]], link_from: str | None = None) -> list[str]:
  """One row per recorded file: its date, machine, dtype and the geometric-mean speed-ups per pass.

  `link_from` (a directory, relative to the same place as the paths) makes each file's name a Markdown link
  relative to it; else the path is shown as a code span."""
  lines = ["| recorded | CPU, kernels | dtype | forward x XLA / x torch | input_grad | weight_grad | file |",
           "|---|---|---|---|---|---|---|"]
  for path, r in results:
    p = r.get("provenance") or {}
    cells = []
    for which in PASSES:
      sub = [row for row in r["rows"] if row["pass"] == which]
      cells.append(f"{_f(geomean(x.get('speedup_vs_xla') for x in sub), '.2f')} / "
                   f"{_f(geomean(x.get('speedup_vs_torch') for x in sub), '.2f')}")
    name = os.path.basename(path)
    ref = f"[{name}]({os.path.relpath(path, link_from)})" if link_from is not None else f"`{path}`"
    m = r["machine"]
    lines.append(f"| {(p.get('date') or '?')[:10]} | {m['cpu']}, {m['cores']} cores, {m['isa']} | "
                 f"{r['config']['dtype']} | {' | '.join(cells)} | {ref} |")
  return lines


def _parser():
  p = argparse.ArgumentParser(prog="python -m jaxseg.bench report",
                              description="Markdown tables from recorded `python -m jaxseg.bench --json` files.")
  p.add_argument("results", nargs="*", help="recorded JSON files")
  p.add_argument("--naive", help="another recorded run to take the 'x naive' column from")
  p.add_argument("--headline", action="store_true",
                 help="one summary row per file (date, machine, geometric means per pass) instead of every row")
  p.add_argument("--link-from", help="with --headline: link each file relative to this directory")
  p.add_argument("--update", nargs="+", metavar="MARKDOWN", help="regenerate the marked blocks in these files")
  p.add_argument("--check", nargs="+", metavar="MARKDOWN",
                 help="exit 1 if a marked block in these files differs from what the recorded files give")
  p.add_argument("--root", default=".", help="the directory that paths in markers are relative to")
  return p


def render(args, root: str = ".") -> str:
  """The Markdown for parsed arguments (paths relative to `root`)."""
  path = lambda f: os.path.join(root, f)
  if not args.results:
    raise ValueError("no recorded result files given")
  if args.headline:  # paths shown (and linked) as given, relative to root
    return "\n".join(headline([(f, load(path(f))) for f in args.results], args.link_from)) + "\n"
  naive = load(path(args.naive)) if args.naive else None
  out = []
  for f in args.results:
    result = load(path(f))
    out += [provenance(result) + f" File: `{f}`.", ""] + full_table(result, naive) + [""] + summary(result) + [""]
  return "\n".join(out[:-1]) + "\n"


def update_text(text: str, root: str = ".") -> str:
  """`text` with every marked block regenerated from the files its marker names."""
  out, pos = [], 0
  for m in BEGIN.finditer(text):
    if m.start() < pos:
      continue
    end = text.find(END, m.end())
    if end < 0:
      raise ValueError(f"a '<!-- bench report: {m['args']} -->' marker has no '{END}'")
    args = _parser().parse_args(shlex.split(m["args"]))
    out += [text[pos:m.end()], render(args, root)]
    pos = end
  return "".join(out) + text[pos:]


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  for name in args.update or ():
    with open(name) as f:
      text = f.read()
    new = update_text(text, args.root)
    if new != text:
      with open(name, "w") as f:
        f.write(new)
      print(f"updated {name}")
  stale = []
  for name in args.check or ():
    with open(name) as f:
      text = f.read()
    if update_text(text, args.root) != text:
      stale.append(name)
  if stale:
    print(f"out of date (regenerate with `python -m jaxseg.bench report --update {' '.join(stale)}`): "
          f"{', '.join(stale)}", file=sys.stderr)
    return 1
  if not (args.update or args.check):
    sys.stdout.write(render(args, args.root))
  return 0


if __name__ == "__main__":
  sys.exit(main())
