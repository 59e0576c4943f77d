"""The EB-GAN example runs, resumes, compares, and trains the same on 8 virtual devices as on one."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.cpu_only

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "ebgan", "train.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  # Blobs on a dark background: enough for a few steps without the bundled MNIST subset.
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:28, :28]
  imgs = [(255 * np.exp(-((yy - rng.uniform(8, 20)) ** 2 + (xx - rng.uniform(8, 20)) ** 2) / 20)).astype(np.uint8)
          for _ in range(256)]
  path = tmp_path_factory.mktemp("data") / "blobs.npz"
  np.savez(path, x_train=np.stack(imgs))
  return str(path)


def run(*args):
  out = subprocess.run([sys.executable, TRAIN, "--quiet", *args], capture_output=True, text=True, timeout=900,
                       cwd=os.path.dirname(TRAIN))
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  return out.stdout


def summary(stdout):
  line = next(l for l in stdout.splitlines() if l.startswith("summary:"))
  return dict(re.findall(r"(\w+)=(\S+)", line))


def test_train_resume_and_devices(tmp_path, data):
  one = summary(run("--steps", "1", "--batch-size", "16", "--sample-every", "1", "--data", data,
                    "--out", str(tmp_path / "one")))
  files = os.listdir(tmp_path / "one")
  assert {"samples_000001.png", "samples_final.png", "losses.png", "checkpoint"} <= set(files)
  assert float(one["train_step_temp_MiB"]) > 0 and float(one["mean_step_ms"]) > 0
  # Data parallel on 8 virtual devices, same seed. The first discriminator loss comes from the initial parameters:
  # equal up to the rounding of the reductions' order. The generator loss follows one Adam update of D, which
  # normalises each gradient and so magnifies that rounding where a gradient is near zero: a looser bound.
  eight = summary(run("--steps", "1", "--batch-size", "16", "--devices", "8", "--data", data,
                      "--out", str(tmp_path / "eight")))
  for key, tol in (("final_loss_d", 1e-5), ("final_loss_g", 1e-3)):
    assert abs(float(one[key]) - float(eight[key])) <= tol * abs(float(one[key])), (key, one, eight)
  # Resuming continues from the checkpoint.
  out = run("--steps", "2", "--batch-size", "16", "--resume", "--data", data, "--out", str(tmp_path / "one"))
  assert "resumed from step 1" in out and summary(out)["steps"] == "2"


def test_compare(data):
  out = run("--compare", "--compare-steps", "1", "--batch-size", "8", "--data", data)
  assert re.search(r"^flax\s+\d", out, re.M) and re.search(r"^jaxseg\s+\d", out, re.M)
  assert "jaxseg vs flax" in out
