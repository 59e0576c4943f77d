"""How much of each tiled CUDA kernel's main loop is tensor-core work, read from the installed module's SASS.

For every tiled kernel (`TiledGatherKernel`, `TiledWeightGradKernel`) and architecture, the innermost loop that
holds its HMMA instructions (the shortest span closed by a backward branch that contains one) and, in it, the
instructions per HMMA and HMMA's share of all instructions. Issue 24 sets its targets at >= 35 % for the 16-bit
128-wide kernels and >= 20 % for every tiled kernel; benchmarks/NOTES.md records the figures per kernel.

  python benchmarks/sass_mix.py [--arch sm_80,sm_90] [--module PATH] [--json OUT]

Needs cuobjdump and nvdisasm (PATH, or the nvidia-cuda-cuobjdump / -nvdisasm wheels of the test extra) and a
jaxseg built with its CUDA module; no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_BRANCH_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")
_KERNEL = re.compile(r"(Tiled(?:Gather|WeightGrad)Kernel)INS1_\d+(\w+?Math)ELi(\d+)E(?:Lb([01])E)?")


def tool(name: str) -> str | None:
  """A CUDA binary tool from PATH or from the nvidia-cuda-* wheels (nvidia/cu13/bin in site-packages)."""
  found = shutil.which(name)
  if found:
    return found
  for key in ("purelib", "platlib"):
    path = Path(sysconfig.get_paths()[key]) / "nvidia" / "cu13" / "bin" / name
    if path.exists():
      return str(path)
  return None


def dump_sass(module: str, arch: str) -> str:
  cuobjdump, nvdisasm = tool("cuobjdump"), tool("nvdisasm")
  if cuobjdump is None or nvdisasm is None:
    raise RuntimeError("cuobjdump/nvdisasm not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
  env = dict(os.environ, PATH=os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", ""))
  out = subprocess.run([cuobjdump, "--dump-sass", "-arch", arch, module], capture_output=True, text=True, env=env,
                       timeout=600, check=True)
  return out.stdout


def functions(sass: str) -> dict[str, list[tuple[int, str]]]:
  """{mangled name: [(address, opcode)]} of a cuobjdump listing of one architecture."""
  result, current = {}, None
  for line in sass.splitlines():
    if m := re.match(r"\s*Function : (\S+)", line):
      current = result.setdefault(m.group(1), [])
    elif current is not None and (m := _INSTRUCTION.search(line)):
      address, opcode, operands = int(m.group(1), 16), m.group(2), m.group(3)
      if opcode == "BRA" and (t := _BRANCH_TARGET.search(operands)):
        opcode = f"BRA:{int(t.group(1), 16)}"
      current.append((address, opcode))
  return result


def main_loop_mix(code: list[tuple[int, str]]) -> dict | None:
  """The innermost loop holding HMMA: its instruction count, HMMA count and HMMA share; None without HMMA."""
  loops = []
  for address, opcode in code:
    if opcode.startswith("BRA:") and (target := int(opcode[4:])) <= address:
      body = [op for a, op in code if target <= a <= address]
      hmma = sum(op.startswith("HMMA") for op in body)
      if hmma:
        loops.append((len(body), hmma))
  if not loops:
    return None
  size, hmma = min(loops)
  return {"instructions": size, "hmma": hmma, "hmma_share": hmma / size}


def kernel_name(mangled: str) -> str | None:
  """'TiledGatherKernel<Bf16Math, 128, transposed>' style names for the tiled kernels; None for others."""
  m = _KERNEL.search(mangled)
  if not m:
    return None
  kernel, math, width, flag = m.groups()
  return f"{kernel}<{math}, {width}{'' if flag is None else ', ' + ('true' if flag == '1' else 'false')}>"


def measure(module: str, archs: list[str]) -> list[dict]:
  rows = []
  for arch in archs:
    for mangled, code in functions(dump_sass(module, arch)).items():
      if (name := kernel_name(mangled)) and (mix := main_loop_mix(code)):
        rows.append({"arch": arch, "kernel": name, **mix})
  return sorted(rows, key=lambda r: (r["arch"], r["kernel"]))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", default="sm_80,sm_90", help="comma-separated architectures (default: sm_80,sm_90)")
  parser.add_argument("--module", help="the CUDA module (default: the installed jaxseg's)")
  parser.add_argument("--json", help="write the rows here")
  args = parser.parse_args(argv)
  module = args.module
  if module is None:
    from jaxseg import _ext

    if _ext.cuda is None:
      print("sass_mix: jaxseg was built without its CUDA module", file=sys.stderr)
      return 2
    module = _ext.cuda.__file__
  rows = measure(module, args.arch.split(","))
  print(f"{'arch':6} {'kernel':44} {'loop':>5} {'HMMA':>5} {'share':>6} {'per HMMA':>8}")
  for r in rows:
    print(f"{r['arch']:6} {r['kernel']:44} {r['instructions']:5d} {r['hmma']:5d} {r['hmma_share']:6.1%} "
          f"{r['instructions'] / r['hmma']:8.1f}")
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
