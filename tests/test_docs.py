"""Every fenced Python block of the README, the docs pages and the example's README runs, in order, as written.

One test per file; the blocks of a file share one namespace, as a reader running them one after another would.
A block is left out only by an HTML comment on the line before its fence that gives a reason,
`<!-- skip: reason -->` (use rarely). A `print(...)` line with a trailing comment states what it prints: the
comment up to its first ':' or ';' must be the printed text (spaces aside), so `print(ok)  # True: lax's result`
fails the test if it prints False.
"""

import builtins
import io
import pathlib
import re
import sys

import pytest
from gpu_switch_state import restored as restored_gpu_switch

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", ROOT / "examples" / "ebgan" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!-- skip:(.*?)-->\s*$")


def python_blocks(text: str):
  """(first line number, code) of each Python block not marked to skip; ValueError for a skip without reason."""
  blocks = []
  for m in FENCE.finditer(text):
    line = text.count("\n", 0, m.start()) + 1
    before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
    if (skip := SKIP.search(before)) is not None:
      if not skip.group(1).strip():
        raise ValueError(f"line {line}: a skipped block must say why (<!-- skip: reason -->)")
      continue
    blocks.append((line + 1, m.group(1)))
  return blocks


def expected_prints(code: str):
  """{line within the block: expected text} for the `print(...)` lines that state their output."""
  out = {}
  for i, line in enumerate(code.splitlines(), start=1):
    m = re.match(r"\s*print\(.*\)\s*#\s*(.+)$", line)
    if m:
      out[i] = re.split(r"[:;]", m.group(1), maxsplit=1)[0].strip()
  return out


def _normal(text: str) -> str:
  return re.sub(r"\s+", " ", text).replace("[ ", "[").replace(" ]", "]").strip()


def run_blocks(path: pathlib.Path):
  """Runs a file's blocks in one namespace; returns how many ran. Fails naming the file and line."""
  namespace = {"__name__": f"docs_{path.stem}"}
  for first_line, code in python_blocks(path.read_text()):
    name = f"{path.relative_to(ROOT)}:{first_line}"
    printed = {}

    def recording_print(*args, sep=" ", end="\n", file=None, flush=False, _name=name):
      frame = sys._getframe(1)
      if file is None and frame.f_code.co_filename == _name:
        buffer = io.StringIO()
        builtins.print(*args, sep=sep, end=end, file=buffer)
        printed[frame.f_lineno] = buffer.getvalue()
      builtins.print(*args, sep=sep, end=end, file=file, flush=flush)

    namespace["print"] = recording_print
    exec(compile(code, name, "exec"), namespace)  # noqa: S102 - the docs' own code
    for line, want in expected_prints(code).items():
      assert line in printed, f"{name}: the print on line {line} of the block did not run"
      assert _normal(printed[line]) == _normal(want), (
          f"{name}, line {line} of the block prints {printed[line].strip()!r}; its comment says {want!r}")
  return len(python_blocks(path.read_text()))


DOCS_WITH_CODE = [p for p in FILES if p.exists() and python_blocks(p.read_text())]


@pytest.mark.cpu_only
@pytest.mark.parametrize("path", DOCS_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_blocks_run(path):
  # A page may switch jaxseg's GPU kernels on (docs/gpu.md does): the switch is restored after it.
  with restored_gpu_switch():
    assert run_blocks(path) > 0


def test_the_pages_that_must_have_code_do():
  """The README's quickstart and the user guide are tested; an edit that breaks their fences would drop them."""
  names = {str(p.relative_to(ROOT)) for p in DOCS_WITH_CODE}
  for page in ("README.md", "docs/semantics.md", "docs/layers.md", "docs/transforms.md", "docs/export.md",
               "docs/method.md", "docs/troubleshooting.md"):
    assert page in names, page


def test_skip_marker_needs_a_reason():
  text = "a\n<!-- skip: needs a GPU -->\n```python\nraise SystemExit\n```\n```python\nx = 1\n```\n"
  assert python_blocks(text) == [(7, "x = 1\n")]
  with pytest.raises(ValueError, match="must say why"):
    python_blocks("<!-- skip: -->\n```python\nx = 1\n```\n")


def test_stated_prints_are_checked():
  assert expected_prints("print(1 + 1)  # 2: two\nprint(3)\n") == {1: "2"}
  assert _normal("[ inf  nan  nan -inf]") == _normal("[inf nan nan -inf]")
