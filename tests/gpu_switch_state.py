"""Tests' control of jaxseg's GPU switch (jaxseg/_gpu.py): each test that changes it restores it exactly (its value,
what set it, the warnings already given), so the order of tests does not matter."""

import contextlib

from jaxseg import _gpu


@contextlib.contextmanager
def restored(value=None):
  """Within the block the switch is `value` as if set by use_gpu_kernels (None: the default, as if nothing had set
  it, with no warning given yet); afterwards as it was."""
  saved = _gpu._setting.value, _gpu._set_by, set(_gpu._warned)
  if value is None:
    _gpu._setting.set_global(_gpu.DEFAULT_ENABLED)
    _gpu._set_by = "default"
    _gpu._warned.clear()
  else:
    _gpu.use_gpu_kernels(value)
  try:
    yield
  finally:
    _gpu._setting.set_global(saved[0])
    _gpu._set_by = saved[1]
    _gpu._warned.clear()
    _gpu._warned.update(saved[2])
