"""The EB-GAN example runs, evaluates, resumes, compares, trains the same on 8 virtual devices as on one, and on the
naive transposed convolution as on jaxseg's."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.cpu_only

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "ebgan", "train.py")
TINY_EVAL = ("--eval-samples", "64", "--eval-classifier-steps", "5")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  # Labelled blobs on a dark background (the label says where the blob sits): enough for a few steps and for the
  # evaluator's classifier, without the bundled MNIST subset.
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:28, :28]
  labels = rng.integers(0, 10, 256)
  centres = np.stack([8 + 12 * (labels % 2), 6 + 4 * (labels // 2)], axis=1) + rng.uniform(-1, 1, (256, 2))
  imgs = [(255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20)).astype(np.uint8) for cy, cx in centres]
  path = tmp_path_factory.mktemp("data") / "blobs.npz"
  np.savez(path, x_train=np.stack(imgs), y_train=labels)
  return str(path)


def run(*args, quiet=True):
  out = subprocess.run([sys.executable, TRAIN, *(["--quiet"] if quiet else []), *args], capture_output=True,
                       text=True, timeout=900, cwd=os.path.dirname(TRAIN))
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  return out


def summary(stdout):
  line = next(l for l in stdout.splitlines() if l.startswith("summary:"))
  return dict(re.findall(r"(\w+)=(\S+)", line))


def test_train_eval_resume_and_devices(tmp_path, data):
  one = summary(run("--steps", "1", "--batch-size", "16", "--sample-every", "1", "--data", data, *TINY_EVAL,
                    "--out", str(tmp_path / "one")).stdout)
  files = os.listdir(tmp_path / "one")
  assert {"samples_000001.png", "samples_final.png", "losses.png", "checkpoint", "samples.npz"} <= set(files)
  assert float(one["train_step_temp_MiB"]) > 0 and float(one["mean_step_ms"]) > 0
  # The evaluation: scores in their ranges, the samples it scored.
  assert 1.0 <= float(one["inception_score"]) <= 10.0
  assert float(one["frechet_distance"]) >= 0 and 0 <= float(one["classifier_accuracy"]) <= 1
  with np.load(tmp_path / "one" / "samples.npz") as z:
    assert z["samples"].shape == (64, 28, 28) and z["samples"].dtype == np.uint8
  # Data parallel on 8 virtual devices, same seed. The first discriminator loss comes from the initial parameters:
  # equal up to the rounding of the reductions' order. The generator loss follows one Adam update of D, which
  # normalises each gradient and so magnifies that rounding where a gradient is near zero: a looser bound.
  eight = summary(run("--steps", "1", "--batch-size", "16", "--devices", "8", "--data", data, "--no-eval",
                      "--out", str(tmp_path / "eight")).stdout)
  for key, tol in (("final_loss_d", 1e-5), ("final_loss_g", 1e-3)):
    assert abs(float(one[key]) - float(eight[key])) <= tol * abs(float(one[key])), (key, one, eight)
  assert "inception_score" not in eight
  # Resuming continues from the checkpoint. Not on a terminal, the progress is plain lines every --log-every steps
  # and at the end, counted from where the run resumed, and no progress bar.
  out = run("--steps", "3", "--batch-size", "16", "--resume", "--data", data, "--no-eval", "--log-every", "2",
            "--out", str(tmp_path / "one"), quiet=False)
  assert "resumed from step 1" in out.stdout and summary(out.stdout)["steps"] == "3"
  steps = re.findall(r"^ebgan\[jaxseg\] step (\d+)/3 .*loss_d=", out.stdout, re.M)
  assert steps == ["2", "3"], out.stdout
  assert "\r" not in out.stdout + out.stderr


def test_naive_impl(tmp_path, data):
  # The naive transposed convolution computes what jaxseg's does: the same first losses from the same seed (bounds
  # as for 8 devices above; later steps part further, as Adam's normalised steps amplify the rounding).
  args = ("--steps", "1", "--batch-size", "16", "--data", data, "--no-eval")
  ours = summary(run(*args, "--out", str(tmp_path / "jaxseg")).stdout)
  naive = summary(run(*args, "--impl", "naive", "--out", str(tmp_path / "naive")).stdout)
  assert naive["impl"] == "naive"
  for key, tol in (("final_loss_d", 1e-5), ("final_loss_g", 1e-3)):
    assert abs(float(ours[key]) - float(naive[key])) <= tol * abs(float(ours[key])), (key, ours, naive)


def test_compare_steps(data):
  out = run("--compare", "--compare-steps", "1", "--batch-size", "8", "--data", data).stdout
  for impl in ("naive", "flax", "jaxseg"):
    assert re.search(rf"^{impl}\s+\d+\.\d+\s+\d+\.\d+\s+n/a\s", out, re.M), out  # no peak bytes on CPU
  assert "jaxseg vs flax" in out and "jaxseg vs naive" in out


def test_compare_seconds(tmp_path, data):
  out = run("--compare", "--seconds", "1", "--batch-size", "8", "--data", data, *TINY_EVAL,
            "--out", str(tmp_path)).stdout
  for impl in ("flax", "jaxseg"):
    row = re.search(rf"^{impl}\s+(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert row and int(row[1]) >= 1 and 1.0 <= float(row[2]) <= 10.0, out
  assert (tmp_path / "compare.png").exists()
  with np.load(tmp_path / "compare_samples.npz") as z:
    assert sorted(z.files) == ["flax", "jaxseg"] and z["jaxseg"].shape == (64, 28, 28)
