"""The typing stubs of the extension modules (jaxseg/<module>.pyi, shipped in the wheel beside the modules) declare
exactly what each module binds: the same public names, and for each function the same parameter names. Regenerate a
stub after changing a module's bindings: `python -m nanobind.stubgen -m jaxseg._jaxseg_cpu -o jaxseg/_jaxseg_cpu.pyi`
(the CUDA module's likewise, on a build that has it)."""

import ast
import pathlib
import re

import pytest

import jaxseg
from jaxseg import _ext

MODULES = {"_jaxseg_cpu": _ext.cpu, "_jaxseg_cuda": _ext.cuda}


def _stub(name):
  path = pathlib.Path(jaxseg.__file__).parent / f"{name}.pyi"
  assert path.is_file(), f"{path} is missing: the package must ship a stub for each extension module"
  return ast.parse(path.read_text())


def _declared(tree):
  """{name: parameter names, or None for an attribute or class} of a stub's top level."""
  out = {}
  for node in tree.body:
    if isinstance(node, ast.FunctionDef):
      out[node.name] = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    elif isinstance(node, ast.ClassDef):
      out[node.name] = None
    elif isinstance(node, ast.AnnAssign):
      out[node.target.id] = None
    elif isinstance(node, ast.Assign):
      out.update({t.id: None for t in node.targets})
  return out


def _parameters(fn):
  """The parameter names nanobind bound for fn, from its signature (`def name(a: T, b: T = ...) -> R`)."""
  signature = fn.__nb_signature__[0][0]
  params = signature[signature.index("(") + 1:signature.rindex(") ->")]
  # Names are what precedes ':' at the top level of the parameter list (types hold brackets and commas).
  depth, names, current = 0, [], ""
  for ch in params + ",":
    if ch in "[(":
      depth += 1
    elif ch in "])":
      depth -= 1
    if ch == "," and depth == 0:
      if current.strip():
        names.append(re.match(r"\s*\**(\w+)", current).group(1))
      current = ""
    else:
      current += ch
  return [n for n in names if n not in ("self",)]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_stub_declares_what_the_module_binds(name):
  tree = _stub(name)
  module = MODULES[name]
  if module is None:
    pytest.skip(f"jaxseg was built without {name}")
  declared = _declared(tree)
  public = {n for n in dir(module) if not n.startswith("__")}
  assert set(declared) == public, (f"{name}.pyi declares {sorted(set(declared) - public)} that the module lacks "
                                   f"and lacks {sorted(public - set(declared))}: regenerate it (see this file)")
  for n, params in declared.items():
    if params is not None:
      assert params == _parameters(getattr(module, n)), n


def test_package_is_marked_typed():
  assert (pathlib.Path(jaxseg.__file__).parent / "py.typed").is_file()
