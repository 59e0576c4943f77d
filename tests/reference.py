"""An independent float64 reference: the textbook zero-insertion form in NumPy, in the canonical layout
(x: N, H..., Ci; w: K..., Ci, Co; no kernel transpose), with its two adjoints (the input and weight gradients).
Deliberately naive: it shares no code with jaxseg."""

import itertools

import numpy as np


def padded_dilated(x, strides, padding):
  """x (N, H..., C) with s-1 zeros inserted between elements and padded (lo, hi) per axis; negative pads crop
  (XLA's order: the size is lo + n + hi even when a crop exceeds n)."""
  x = np.asarray(x, np.float64)
  shape = (x.shape[0], *[(h - 1) * s + 1 for h, s in zip(x.shape[1:-1], strides)], x.shape[-1])
  xd = np.zeros(shape)
  xd[(slice(None), *[slice(None, None, s) for s in strides], slice(None))] = x
  for a, (lo, hi) in enumerate(padding):
    ax = a + 1
    zeros = lambda m: np.zeros(xd.shape[:ax] + (m,) + xd.shape[ax + 1:])
    xd = np.concatenate([zeros(max(lo, 0)), xd, zeros(max(hi, 0))], axis=ax)
    xd = np.take(xd, range(max(-lo, 0), xd.shape[ax] - max(-hi, 0)), axis=ax)
  return xd


def _tap_windows(kernel, dilation, out_spatial):
  """(tap, slices of the padded dilated input it meets for every output) for each kernel tap."""
  for k in itertools.product(*[range(kk) for kk in kernel]):
    yield k, tuple(slice(d * kk, d * kk + o) for kk, d, o in zip(k, dilation, out_spatial))


def conv_transpose_ref(x, w, strides, padding, dilation=None, groups=1):
  """y (N, O..., Co) for x (N, H..., Ci) and w (K..., Ci/G, Co): G independent transposed convolutions, group g
  mapping input channels [g Ci/G, (g+1) Ci/G) to output channels [g Co/G, (g+1) Co/G) (lax's grouping)."""
  if groups > 1:
    xs, ws = np.split(np.asarray(x), groups, axis=-1), np.split(np.asarray(w), groups, axis=-1)
    return np.concatenate([conv_transpose_ref(a, b, strides, padding, dilation) for a, b in zip(xs, ws)], -1)
  w = np.asarray(w, np.float64)
  n = x.ndim - 2
  dilation = dilation or (1,) * n
  xd = padded_dilated(x, strides, padding)
  ks = w.shape[:n]
  out_sp = [xd.shape[a + 1] - d * (k - 1) for a, (k, d) in enumerate(zip(ks, dilation))]
  y = np.zeros((x.shape[0], *out_sp, w.shape[-1]))
  for k, sl in _tap_windows(ks, dilation, out_sp):
    y += np.einsum("n...c,cd->n...d", xd[(slice(None), *sl, slice(None))], w[k])
  return y


def input_grad_ref(dy, w, strides, padding, in_spatial, dilation=None):
  """The adjoint of conv_transpose_ref in x: dx (N, H..., Ci) for dy (N, O..., Co)."""
  dy, w = np.asarray(dy, np.float64), np.asarray(w, np.float64)
  n = dy.ndim - 2
  dilation = dilation or (1,) * n
  frame = [(h - 1) * s + 1 + lo + hi for h, s, (lo, hi) in zip(in_spatial, strides, padding)]
  g = np.zeros((dy.shape[0], *frame, w.shape[-2]))
  for k, sl in _tap_windows(w.shape[:n], dilation, dy.shape[1:-1]):
    g[(slice(None), *sl, slice(None))] += np.einsum("n...d,cd->n...c", dy, w[k])
  # Input j sits at j*s + lo of the frame; padding cropped it away where that is outside.
  dx = np.zeros((dy.shape[0], *in_spatial, w.shape[-2]))
  for j in itertools.product(*[range(h) for h in in_spatial]):
    t = tuple(jj * s + lo for jj, s, (lo, _) in zip(j, strides, padding))
    if all(0 <= tt < f for tt, f in zip(t, frame)):
      dx[(slice(None), *j, slice(None))] = g[(slice(None), *t, slice(None))]
  return dx


def weight_grad_ref(x, dy, strides, padding, kernel, dilation=None):
  """The adjoint of conv_transpose_ref in w: dw (K..., Ci, Co)."""
  dy = np.asarray(dy, np.float64)
  n = x.ndim - 2
  dilation = dilation or (1,) * n
  xd = padded_dilated(x, strides, padding)
  dw = np.zeros((*kernel, x.shape[-1], dy.shape[-1]))
  for k, sl in _tap_windows(kernel, dilation, dy.shape[1:-1]):
    window = xd[(slice(None), *sl, slice(None))]
    dw[k] = window.reshape(-1, window.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
  return dw


def to_canonical(lhs, rhs, dimension_numbers, transpose_kernel, groups=1):
  """(lhs, rhs) in named layouts (e.g. 'NCHW', 'OIHW') to canonical NH..C / H..IO, applying transpose_kernel;
  with groups, w in conv_transpose_ref's grouped form (K..., Ci/G, Co)."""
  lhs_spec, rhs_spec, _ = dimension_numbers
  spatial = [c for c in rhs_spec if c not in "IO"]  # jax orders spatial axes as the kernel spec does
  x = np.transpose(lhs, [lhs_spec.index("N")] + [lhs_spec.index(c) for c in spatial] + [lhs_spec.index("C")])
  r_spatial = spatial
  w = np.transpose(rhs, [rhs_spec.index(c) for c in r_spatial] + [rhs_spec.index("I"), rhs_spec.index("O")])
  if transpose_kernel:
    w = np.flip(w, axis=tuple(range(len(r_spatial))))
    w = np.swapaxes(w, -1, -2)
    if groups > 1:  # (K..., Ci, Co/G), Ci split into groups -> the groups side by side along Co
      w = np.concatenate(np.split(w, groups, axis=-2), axis=-1)
  return x, w


def from_canonical(y, out_spec, rhs_spec):
  spatial = [c for c in rhs_spec if c not in "IO"]
  canonical = ["N"] + spatial + ["C"]
  return np.transpose(y, [canonical.index(c) for c in out_spec])


# conv_transpose's default layouts per number of spatial dimensions.
DEFAULT_DIMENSION_NUMBERS = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}


def explicit_padding(padding, kernel, strides, dilation=None, consistent=False):
  """conv_transpose's `padding` argument as explicit (lo, hi) pads of the dilated input, one pair per spatial
  axis: 'SAME' / 'VALID' as jax.lax.conv_transpose reads them, pairs as they are, or (consistent: the
  use_consistent_padding=True meaning, a forward convolution's padding p) k' - 1 - p. `kernel` holds the
  kernel's spatial sizes, k' = d (k - 1) + 1 its dilated extent."""
  dilation = dilation or (1,) * len(kernel)
  eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
  if isinstance(padding, str):
    return [transpose_padding(k, s, padding) for k, s in zip(eff, strides)]
  if consistent:
    return [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(eff, padding)]
  return [tuple(p) for p in padding]


def transpose_padding(k_eff, s, mode):
  """jax.lax.conv_transpose's reading of 'SAME' / 'VALID', written out again for the tests."""
  if mode == "SAME":
    total = k_eff + s - 2
    lo = k_eff - 1 if s > k_eff - 1 else -(-total // 2)
  else:
    total = k_eff + s - 2 + max(k_eff - s, 0)
    lo = k_eff - 1
  return lo, total - lo


def _tap_links(in_size, out_size, k, s, d, lo):
  """Inputs j and outputs o = j*s + lo - d*k that tap k links on one axis, as two slices."""
  j_first = max(0, -((lo - d * k) // s))  # ceil((d*k - lo) / s)
  j_last = min(in_size - 1, (out_size - 1 + d * k - lo) // s)
  if j_last < j_first:
    return None
  o_first = j_first * s + lo - d * k
  return slice(j_first, j_last + 1), slice(o_first, o_first + (j_last - j_first) * s + 1, s)


def linked_passes(x, w, dy, strides, padding, dilation=None):
  """The three passes in float64, summed over the (input, tap, output) triples the transposed convolution links
  and nothing else: no product meets a padding or an inserted zero, so infinities and NaNs propagate exactly as
  far as the links reach. Canonical layout (x: N, H..., Ci; w: K..., Ci, Co; dy: N, O..., Co).
  Returns (y, dx, dw)."""
  x, w, dy = (np.asarray(v, np.float64) for v in (x, w, dy))
  n = x.ndim - 2
  dilation = dilation or (1,) * n
  y, dx, dw = np.zeros(dy.shape), np.zeros(x.shape), np.zeros(w.shape)
  with np.errstate(invalid="ignore"):  # inf - inf is the NaN these sums are meant to give
    for k in itertools.product(*[range(kk) for kk in w.shape[:n]]):
      _add_tap(x, w, dy, y, dx, dw, k, strides, padding, dilation)
  return y, dx, dw


def _add_tap(x, w, dy, y, dx, dw, k, strides, padding, dilation):
  """Adds kernel tap k's products to each pass: every (input j, output o) pair it links, on every axis."""
  n = x.ndim - 2
  links = [_tap_links(x.shape[1 + a], dy.shape[1 + a], k[a], strides[a], dilation[a], padding[a][0])
           for a in range(n)]
  if any(link is None for link in links):
    return
  j = (slice(None), *[link[0] for link in links], slice(None))
  o = (slice(None), *[link[1] for link in links], slice(None))
  y[o] += np.einsum("n...c,cd->n...d", x[j], w[k])
  dx[j] += np.einsum("n...d,cd->n...c", dy[o], w[k])
  dw[k] += np.einsum("mc,md->cd", x[j].reshape(-1, x.shape[-1]), dy[o].reshape(-1, dy.shape[-1]))


# (in_spatial, kernel, strides, padding): odd sizes, kernels smaller than / equal to / larger than the stride,
# strides 1..4 and mixed per axis, every padding form, 1-D to 3-D. Shared by the tests of every kernel path
# (tests/test_conformance.py, tests/test_gpu_plan.py).
GEOMETRY_GRID = [
    ((7,), (4,), (2,), "SAME"),
    ((7,), (3,), (2,), "VALID"),
    ((9,), (1,), (3,), "SAME"),
    ((9,), (2,), (4,), "VALID"),
    ((8,), (5,), (1,), [(2, 1)]),
    ((6,), (16,), (8,), [(11, 11)]),
    ((5,), (2,), (2,), [(2, 0)]),  # XLA once returned unwritten memory for this input gradient
    ((5, 7), (4, 4), (2, 2), "SAME"),
    ((5, 7), (3, 3), (2, 2), "VALID"),
    ((6, 5), (3, 2), (2, 3), [(1, 2), (0, 1)]),
    ((5, 5), (3, 3), (2, 2), [(-1, 2), (3, -2)]),
    ((4, 6), (1, 3), (3, 1), [(0, 0), (2, 2)]),
    ((3, 3), (5, 5), (2, 2), [(4, 4), (4, 5)]),
    ((2, 3, 4), (2, 2, 2), (2, 2, 2), "VALID"),
    ((3, 4, 2), (3, 2, 3), (2, 1, 3), "SAME"),
    ((3, 3, 3), (3, 3, 3), (2, 2, 2), [(1, 1), (0, 2), (2, 0)]),
]

# Strides far larger than the kernel: most phases have no taps and their outputs are zero.
SPARSE_GRID = [
    ((5,), (3,), (50,), "SAME"),
    ((3, 4), (2, 3), (7, 5), [(1, 0), (0, 2)]),
    ((2, 2, 3), (1, 2, 3), (5, 3, 9), "VALID"),
]
