"""The CPU module's instruction sets stay where they must be (cpu/kernel_set.h): only the micro-kernels of the
avx2, avx512 and avx512_bf16 builds may use AVX instructions, only those of the AVX-512 builds AVX-512 ones. Every
other function (planning, packing, handlers, the portable build, nanobind) must run on any x86-64 CPU, whichever
copy of an inline function the linker kept. Checked on the built module's disassembly."""

import platform
import re
import shutil
import subprocess

import pytest

# The namespaces of the builds compiled with AVX flags (CMakeLists.txt).
AVX512_BUILDS = ("jaxseg::cpu::avx512::", "jaxseg::cpu::avx512_bf16::")
AVX_BUILDS = AVX512_BUILDS + ("jaxseg::cpu::avx2::",)

# Mnemonics that start with "v" but are no AVX instructions (segment checks, VMX).
_NOT_AVX = re.compile(r"^(verr|verw|vm[a-z]*)$")
# EVEX-only operands: zmm registers, mask registers, the upper 16 vector registers, masking and broadcasts.
_AVX512_OPERAND = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|\{%k[0-7]\}|\{z\}|\{1to\d+\}")
_HEADER = re.compile(r"^[0-9a-f]+ <(.*)>:$")


def _own_name(demangled):
  """The function's qualified name (no return type, parameters or lambda suffix) from objdump -C's label."""
  name = demangled.replace("(anonymous namespace)", "{anon}")
  depth, cut = 0, len(name)
  for i, ch in enumerate(name):
    if ch == "<":
      depth += 1
    elif ch == ">":
      depth -= 1
    elif ch == "(" and depth == 0:
      cut = i
      break
  head = name[:cut]
  # The last space outside template brackets separates a template function's return type from its name.
  depth, start = 0, 0
  for i, ch in enumerate(head):
    if ch == "<":
      depth += 1
    elif ch == ">":
      depth -= 1
    elif ch == " " and depth == 0:
      start = i + 1
  return head[start:]


def classify(disassembly):
  """{function: (uses AVX-512, uses any AVX)} from `objdump -d -C --no-show-raw-insn` output."""
  out = {}
  current = None
  for line in disassembly.splitlines():
    m = _HEADER.match(line)
    if m:
      current = m.group(1)
      out.setdefault(current, [False, False])
      continue
    if current is None or "\t" not in line:
      continue
    fields = line.split("\t")
    if len(fields) < 2:
      continue
    insn = fields[1].strip()
    mnemonic = insn.split(" ", 1)[0]
    is512 = bool(_AVX512_OPERAND.search(insn)) or (mnemonic.startswith("k") and mnemonic[1:4] in (
        "mov", "and", "or", "xor", "not", "shi", "add", "tes", "unp", "ort"))
    isavx = is512 or "%ymm" in insn or (mnemonic.startswith("v") and not _NOT_AVX.match(mnemonic))
    out[current][0] |= is512
    out[current][1] |= isavx
  return out


def violations(disassembly):
  """Functions that use instructions their build may not: [(function, what)]."""
  bad = []
  for function, (is512, isavx) in classify(disassembly).items():
    own = _own_name(function)
    if is512 and not own.startswith(AVX512_BUILDS):
      bad.append((function, "AVX-512"))
    elif isavx and not own.startswith(AVX_BUILDS):
      bad.append((function, "AVX"))
  return bad


def disassemble(path):
  return subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path], capture_output=True, text=True,
                        check=True).stdout


@pytest.mark.cpu_only
def test_instruction_sets_only_in_their_builds():
  if platform.machine() not in ("x86_64", "AMD64"):
    pytest.skip("the per-ISA builds exist on x86-64 only")
  if shutil.which("objdump") is None:
    pytest.skip("objdump (binutils) is not installed")
  from jaxseg import _ext
  text = disassemble(_ext.cpu.__file__)
  functions = classify(text)
  # The disassembly names the builds' micro-kernels (the module keeps its local symbols): without them the check
  # below would hold vacuously.
  names = [_own_name(f) for f in functions]
  for build in ("jaxseg::cpu::generic::", *AVX_BUILDS):
    assert any(n.startswith(build) for n in names), f"no function of {build} in {_ext.cpu.__file__}: stripped?"
  assert any(functions[f][0] for f in functions if _own_name(f).startswith("jaxseg::cpu::avx512::"))
  assert any(functions[f][1] and not functions[f][0] for f in functions
             if _own_name(f).startswith("jaxseg::cpu::avx2::"))
  bad = violations(text)
  assert not bad, "instructions outside their builds:\n" + "\n".join(f"{what}: {f}" for f, what in bad[:20])


@pytest.mark.cpu_only
def test_classifier_on_known_lines():
  """The parser on lines of the shapes objdump prints: a check that finds nothing must not be a broken parser."""
  text = "\n".join([
      "0000000000001000 <jaxseg::cpu::planning::(anonymous namespace)::Plan(int)>:",
      "    1000:\tvmovups %zmm0,(%rdi)",
      "0000000000002000 <void jaxseg::cpu::avx512::(anonymous namespace)::Tile<float, 2>(float const*)>:",
      "    2000:\tvfmadd231ps %zmm1,%zmm2,%zmm3{%k1}",
      "0000000000003000 <jaxseg::MakePhasesND(std::vector<int> const&)>:",
      "    3000:\tvaddss %xmm1,%xmm0,%xmm0",
      "0000000000004000 <jaxseg::cpu::avx2::(anonymous namespace)::Tile(float)>:",
      "    4000:\tvfmadd231ps %ymm1,%ymm2,%ymm3",
      "0000000000005000 <jaxseg::cpu::avx2::(anonymous namespace)::Bad(float)>:",
      "    5000:\tkmovw %k1,%eax",
      "0000000000006000 <jaxseg::cpu::generic::(anonymous namespace)::Tile(float)>:",
      "    6000:\tmulps %xmm1,%xmm0",
      "    6004:\tverw (%rax)",
  ])
  assert sorted(violations(text)) == sorted([
      ("jaxseg::cpu::planning::(anonymous namespace)::Plan(int)", "AVX-512"),
      ("jaxseg::MakePhasesND(std::vector<int> const&)", "AVX"),
      ("jaxseg::cpu::avx2::(anonymous namespace)::Bad(float)", "AVX-512"),
  ])
