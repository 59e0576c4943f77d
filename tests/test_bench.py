"""The benchmark CLI (`python -m jaxseg.bench`): a short run on a small suite, its table, JSON and plot."""

import json
import time

import pytest

from jaxseg.bench import cli

LAYERS = {"layers": [
    {"name": "tiny-2d", "source": "test", "N": 2, "in": [5, 6], "c_in": 8, "c_out": 4, "kernel": [4, 4],
     "stride": [2, 2], "padding": [1, 1], "output_padding": [0, 0]},
    {"name": "tiny-1d-odd", "source": "test", "N": 1, "in": [7], "c_in": 3, "c_out": 5, "kernel": [3],
     "stride": [2], "padding": [1], "output_padding": [1]},
    {"name": "tiny-grouped", "source": "test", "N": 2, "in": [5], "c_in": 6, "c_out": 4, "kernel": [4],
     "stride": [2], "padding": [1], "output_padding": [0], "groups": 2},
]}


@pytest.mark.cpu_only
def test_cli_runs_and_writes_results(tmp_path, capsys):
  layers = tmp_path / "layers.json"
  layers.write_text(json.dumps(LAYERS))
  out, png = tmp_path / "r.json", tmp_path / "r.png"
  cli.main(["--layers", str(layers), "--impls", "jaxseg,xla,naive", "--repeats", "3", "--budget", "0.01",
            "--json", str(out), "--plot", str(png), "--no-progress"])
  table = capsys.readouterr().out
  assert all(layer["name"] in table for layer in LAYERS["layers"]) and "geomean" in table
  result = json.loads(out.read_text())
  assert result["schema"] == "jaxseg-bench/1" and result["config"]["repeats"] == 3
  rows = result["rows"]
  assert [(r["layer"], r["pass"]) for r in rows] == [(l["name"], p) for l in LAYERS["layers"]
                                                    for p in ("fwd", "dx", "dw")]
  for r in rows:
    assert all(r["ms"][impl] > 0 for impl in ("jaxseg", "xla", "naive")) and r["ms"]["torch"] is None
    assert r["speedup_vs_xla"] == pytest.approx(r["ms"]["xla"] / r["ms"]["jaxseg"])
    assert r["temp_bytes"]["jaxseg"] is not None
  assert png.stat().st_size > 0


def test_interleaved_timing():
  """Every implementation is timed in every round (medians of its own calls), within the round limits."""
  calls = {"slow": 0, "fast": 0}

  def make(name, seconds):
    def fn():
      calls[name] += 1
      time.sleep(seconds)
    return fn

  medians = cli._time({"slow": make("slow", 0.004), "fast": make("fast", 0.001)}, rounds=4, budget_s=10.0,
                      slice_s=0.008)
  assert medians["slow"] > medians["fast"] >= 0.001
  # One warm-up each, then 4 rounds of the same number (about slice_s / call time, at least 1) of calls.
  for n in calls.values():
    assert n >= 5 and (n - 1) % 4 == 0


def test_unknown_arguments_are_named():
  with pytest.raises(SystemExit):
    cli.main(["--passes", "fwd,bogus"])
