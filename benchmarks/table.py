"""Renders recorded `python -m jaxseg.bench --json` results as the README's markdown table.

  python benchmarks/table.py benchmarks/results/cpu-epyc-zen4-2core.json [--naive OTHER.json]
"""

import argparse
import json
import math


def geomean(values):
  values = [v for v in values if v]
  return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("results")
  p.add_argument("--naive", help="another recorded run to take the naive form's times from")
  args = p.parse_args()
  res = json.load(open(args.results))
  naive = {}
  if args.naive:
    naive = {(r["layer"], r["pass"]): r for r in json.load(open(args.naive))["rows"]}
  m = res["machine"]
  print(f"{m['device']} ({m['cpu']}, {m['cores']} cores, kernels {m['isa']}), {res['config']['dtype']}, "
        f"jax {res['versions']['jax']}, torch {res['versions']['torch']}; {res['config']['dtype']} matmul {res['matmul_gflops']:.0f} GFLOP/s\n")
  print("| layer | pass | jaxseg ms | XLA ms | torch ms | GFLOP/s | x XLA | x torch | x naive | temp MiB ours/XLA |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in res["rows"]:
    ms = r["ms"]
    nv = naive.get((r["layer"], r["pass"]))
    t = r["temp_bytes"]
    print(f"| {r['layer']} | {r['pass']} | {ms['jaxseg']:.2f} | {ms['xla']:.2f} | "
          f"{ms['torch']:.2f} | {r['gflops']:.0f} | {r['speedup_vs_xla']:.2f} | {r['speedup_vs_torch']:.2f} | "
          f"{nv['speedup_vs_naive']:.1f} | {t['jaxseg'] / 2**20:.1f} / {t['xla'] / 2**20:.1f} |"
          if nv else
          f"| {r['layer']} | {r['pass']} | {ms['jaxseg']:.2f} | {ms['xla']:.2f} | "
          f"{ms['torch']:.2f} | {r['gflops']:.0f} | {r['speedup_vs_xla']:.2f} | {r['speedup_vs_torch']:.2f} | - | "
          f"{t['jaxseg'] / 2**20:.1f} / {t['xla'] / 2**20:.1f} |")
  rows = res["rows"]
  print()
  for key, name in (("speedup_vs_xla", "XLA"), ("speedup_vs_torch", "PyTorch"), ("speedup_vs_best_peer", "best peer")):
    print(f"- geometric mean speed-up over {name}: {geomean([r[key] for r in rows]):.2f}x")
  for which in ("forward", "input_grad", "weight_grad"):
    print(f"- {which}: {geomean([r['speedup_vs_xla'] for r in rows if r['pass'] == which]):.2f}x XLA, "
          f"{geomean([r['speedup_vs_torch'] for r in rows if r['pass'] == which]):.2f}x PyTorch")


if __name__ == "__main__":
  main()
