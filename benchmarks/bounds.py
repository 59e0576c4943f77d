"""How far a recorded run is from what the machine allows: for each row, the time its useful FLOPs take at the
machine's FMA peak (benchmarks/fma_peak.c) and so the largest speed-up over the best peer any implementation
could show there, against the one measured.

  cc -O2 -mavx512f -fopenmp benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
  python benchmarks/bounds.py benchmarks/results/cpu-epyc-zen4-2core.json --peak 234
"""

import argparse
import json

from table import geomean


def main():
  p = argparse.ArgumentParser()
  p.add_argument("results")
  p.add_argument("--peak", type=float, required=True, help="the FMA peak in GFLOP/s (fma_peak.c)")
  args = p.parse_args()
  res = json.load(open(args.results))
  print(f"FMA peak {args.peak:.0f} GFLOP/s; measured sgemm {res['matmul_gflops']:.0f} "
        f"({100 * res['matmul_gflops'] / args.peak:.0f} % of peak)\n")
  print(f"{'layer':18s}{'pass':12s}{'ideal ms':>9s}{'jaxseg':>8s}{'peer':>8s}  {'%peak ours/peer':>15s}"
        f"{'x peer':>8s}{'bound':>7s}")
  got, bound = [], []
  for r in res["rows"]:
    ideal = r["gflop"] / args.peak * 1e3
    peers = {k: v for k, v in r["ms"].items() if k not in ("jaxseg", "naive") and v}
    peer = min(peers.values())
    got.append(peer / r["ms"]["jaxseg"])
    bound.append(peer / ideal)
    print(f"{r['layer']:18s}{r['pass']:12s}{ideal:9.2f}{r['ms']['jaxseg']:8.2f}{peer:8.2f}  "
          f"{100 * ideal / r['ms']['jaxseg']:7.0f} /{100 * ideal / peer:4.0f} %{got[-1]:8.2f}{bound[-1]:7.2f}")
  print(f"\ngeomean speed-up over the best peer: measured {geomean(got):.2f}x; at the FMA peak on every row "
        f"{geomean(bound):.2f}x")


if __name__ == "__main__":
  main()
