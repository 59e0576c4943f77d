"""An independent float64 reference: the textbook zero-insertion form in NumPy, in the canonical layout
(x: N, H..., Ci; w: K..., Ci, Co; no kernel transpose). Deliberately naive: it shares no code with jaxseg."""

import itertools

import numpy as np


def conv_transpose_ref(x, w, strides, padding, dilation=None):
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  n = x.ndim - 2
  dilation = dilation or (1,) * n
  # Insert s-1 zeros between input elements.
  shape = (x.shape[0], *[(h - 1) * s + 1 for h, s in zip(x.shape[1:-1], strides)], x.shape[-1])
  xd = np.zeros(shape)
  xd[(slice(None), *[slice(None, None, s) for s in strides], slice(None))] = x
  # Pad, then crop for negative padding (XLA's order: the size is lo + n + hi even when a crop exceeds n).
  for a, (lo, hi) in enumerate(padding):
    ax = a + 1
    zeros = lambda m: np.zeros(xd.shape[:ax] + (m,) + xd.shape[ax + 1:])
    xd = np.concatenate([zeros(max(lo, 0)), xd, zeros(max(hi, 0))], axis=ax)
    xd = np.take(xd, range(max(-lo, 0), xd.shape[ax] - max(-hi, 0)), axis=ax)
  ks = w.shape[:n]
  out_sp = [xd.shape[a + 1] - d * (k - 1) for a, (k, d) in enumerate(zip(ks, dilation))]
  y = np.zeros((x.shape[0], *out_sp, w.shape[-1]))
  for k in itertools.product(*[range(kk) for kk in ks]):
    sl = tuple(slice(d * kk, d * kk + o) for kk, d, o in zip(k, dilation, out_sp))
    y += np.einsum("n...c,cd->n...d", xd[(slice(None), *sl, slice(None))], w[k])
  return y


def to_canonical(lhs, rhs, dimension_numbers, transpose_kernel):
  """(lhs, rhs) in named layouts (e.g. 'NCHW', 'OIHW') to canonical NH..C / H..IO, applying transpose_kernel."""
  lhs_spec, rhs_spec, _ = dimension_numbers
  spatial = [c for c in rhs_spec if c not in "IO"]  # jax orders spatial axes as the kernel spec does
  x = np.transpose(lhs, [lhs_spec.index("N")] + [lhs_spec.index(c) for c in spatial] + [lhs_spec.index("C")])
  r_spatial = spatial
  w = np.transpose(rhs, [rhs_spec.index(c) for c in r_spatial] + [rhs_spec.index("I"), rhs_spec.index("O")])
  if transpose_kernel:
    w = np.flip(w, axis=tuple(range(len(r_spatial))))
    w = np.swapaxes(w, -1, -2)
  return x, w


def from_canonical(y, out_spec, rhs_spec):
  spatial = [c for c in rhs_spec if c not in "IO"]
  canonical = ["N"] + spatial + ["C"]
  return np.transpose(y, [canonical.index(c) for c in out_spec])


def transpose_padding(k_eff, s, mode):
  """jax.lax.conv_transpose's reading of 'SAME' / 'VALID', written out again for the tests."""
  if mode == "SAME":
    total = k_eff + s - 2
    lo = k_eff - 1 if s > k_eff - 1 else -(-total // 2)
  else:
    total = k_eff + s - 2 + max(k_eff - s, 0)
    lo = k_eff - 1
  return lo, total - lo
