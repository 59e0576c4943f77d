"""Reading compiled programs in tests: which custom calls, XLA convolutions, layout copies and collectives the
optimised HLO holds. One home for the patterns, so a change in XLA's text format is fixed once."""

import re

import jax

from jaxseg._passes import FORWARD, PASSES

# The targets of our three passes, and of the forward alone.
ALL_TARGETS = frozenset(p.target for p in PASSES)
FORWARD_TARGETS = frozenset({FORWARD.target})


def compiled_hlo(fn, *args) -> str:
  """The optimised HLO text of jax.jit(fn) compiled for `args` on the default device."""
  return jax.jit(fn).lower(*args).compile().as_text()


def custom_call_targets(hlo: str, prefix: str = "") -> set[str]:
  """The custom-call targets in HLO text whose names start with `prefix` (all of them by default)."""
  return set(re.findall(rf'custom_call_target="({re.escape(prefix)}[^"]*)"', hlo))


def has_convolution(hlo: str) -> bool:
  """Whether the HLO holds an XLA `convolution` instruction (not a name in metadata)."""
  return bool(re.search(r"\bconvolution\(", hlo))


def compiled_ops(fn, *args) -> tuple[set[str], bool]:
  """(custom-call targets, whether an XLA convolution is present) of jax.jit(fn) compiled for `args`."""
  hlo = compiled_hlo(fn, *args)
  return custom_call_targets(hlo), has_convolution(hlo)


def layout_ops(hlo: str) -> list[str]:
  """Instructions that copy or permute (not names in op_name metadata: an op follows the result shape)."""
  return re.findall(r"[\]}] (reverse|transpose|copy)\(", hlo)


def collectives(hlo: str) -> dict[str, int]:
  """How many all-gather, all-reduce and all-to-all instructions (synchronous or -start) the HLO holds."""
  return {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo)) for op in ("all-gather", "all-reduce", "all-to-all")}
