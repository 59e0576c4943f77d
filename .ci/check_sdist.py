"""Checks that an sdist holds exactly the files git tracks (plus the generated PKG-INFO): nothing needed to build
or test is left out, and no build artefact or stray file of the working tree slips in.

  python .ci/check_sdist.py dist/jaxseg-X.Y.Z.tar.gz
"""

import subprocess
import sys
import tarfile


def main(path):
  with tarfile.open(path) as tar:
    names = [m.name for m in tar.getmembers() if m.isfile()]
  prefix = names[0].split("/", 1)[0] + "/"
  in_sdist = {n[len(prefix):] for n in names if n.startswith(prefix)} - {"PKG-INFO"}
  tracked = set(subprocess.run(["git", "ls-files", "-z"], check=True, capture_output=True, text=True,
                               cwd=sys.path[0] + "/..").stdout.split("\0")) - {""}
  missing, extra = sorted(tracked - in_sdist), sorted(in_sdist - tracked)
  for name in missing:
    print(f"check_sdist: tracked by git but not in the sdist: {name}")
  for name in extra:
    print(f"check_sdist: in the sdist but not tracked by git: {name}")
  if missing or extra:
    return 1
  print(f"check_sdist: {path} holds the {len(tracked)} tracked files and PKG-INFO")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
