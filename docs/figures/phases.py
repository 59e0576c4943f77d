"""Draws docs/figures/phases.png: a 1-D transposed convolution with stride 2, kernel size 4 and pads (2, 2) of the
dilated input (PyTorch's padding=1), first as zero insertion, then as kernel segregation.

  python docs/figures/phases.py     (needs matplotlib; the PNG is committed)
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

N, S, K, LO, HI = 4, 2, 4, 2, 2          # input size, stride, kernel size, pads of the dilated input
DILATED = (N - 1) * S + 1
OUT = DILATED + LO + HI - K + 1          # 8
PHASE_COLOURS = ("#4c72b0", "#dd8452")


def dilated_cell(j):
  """What position j of the padded, dilated input holds: ('x', i), ('zero', None) or ('pad', None)."""
  t = j - LO
  if t < 0 or t >= DILATED:
    return "pad", None
  return ("x", t // S) if t % S == 0 else ("zero", None)


def main():
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [11, 5]})
  width = DILATED + LO + HI
  useful = wasted = 0
  for o in range(OUT):
    for k in range(K):
      kind, i = dilated_cell(o + k)
      colour = PHASE_COLOURS[o % S] if kind == "x" else "#dddddd"
      useful += kind == "x"
      wasted += kind != "x"
      left.add_patch(Rectangle((o + k, OUT - 1 - o), 1, 1, facecolor=colour, edgecolor="white"))
      left.text(o + k + 0.5, OUT - 0.5 - o, f"w{k}", ha="center", va="center", fontsize=8,
                color="white" if kind == "x" else "#888888")
  for j in range(width):
    kind, i = dilated_cell(j)
    left.text(j + 0.5, OUT + 0.4, {"x": f"x{i}", "zero": "0", "pad": "pad"}[kind], ha="center", fontsize=8)
  left.set_xlim(0, width)
  left.set_ylim(0, OUT + 1)
  left.set_yticks([OUT - 0.5 - o for o in range(OUT)], [f"y{o}" for o in range(OUT)])
  left.set_xticks([])
  left.set_title(f"zero insertion: {useful + wasted} multiplications, {wasted} meet an inserted zero or padding",
                 fontsize=9)
  for o in range(OUT):
    r = o % S
    for i in range(N):
      k = i * S + LO - o
      if 0 <= k < K:
        right.add_patch(Rectangle((i, OUT - 1 - o), 1, 1, facecolor=PHASE_COLOURS[r], edgecolor="white"))
        right.text(i + 0.5, OUT - 0.5 - o, f"w{k}", ha="center", va="center", fontsize=8, color="white")
  for i in range(N):
    right.text(i + 0.5, OUT + 0.4, f"x{i}", ha="center", fontsize=8)
  right.set_xlim(0, N)
  right.set_ylim(0, OUT + 1)
  right.set_yticks([OUT - 0.5 - o for o in range(OUT)],
                   [f"y{o} (phase {o % S}: taps {', '.join(f'w{k}' for k in range((LO - o) % S, K, S))})"
                    for o in range(OUT)], fontsize=8)
  right.yaxis.tick_right()
  right.set_xticks([])
  right.set_title(f"kernel segregation: {useful} multiplications, none wasted", fontsize=9)
  fig.suptitle("1-D transposed convolution, stride 2, kernel 4, pads (2, 2): each output phase is a stride-1 "
               "correlation of the original input with its own sub-kernel", fontsize=10)
  fig.tight_layout()
  out = pathlib.Path(__file__).with_suffix(".png")
  fig.savefig(out, dpi=100)
  print(f"wrote {out} ({useful} useful, {wasted} wasted multiplications)")


if __name__ == "__main__":
  main()
