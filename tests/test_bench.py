"""The benchmark CLI (`python -m jaxseg.bench`): a short run on a small suite, its table, JSON and plot."""

import json
import os
import pathlib

import jaxseg
import pytest

from jaxseg.bench import cli, report

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))

LAYERS = {"layers": [
    {"name": "tiny-2d", "source": "test", "N": 2, "in": [5, 6], "c_in": 8, "c_out": 4, "kernel": [4, 4],
     "stride": [2, 2], "padding": [1, 1], "output_padding": [0, 0]},
    {"name": "tiny-1d-odd", "source": "test", "N": 1, "in": [7], "c_in": 3, "c_out": 5, "kernel": [3],
     "stride": [2], "padding": [1], "output_padding": [1]},
    {"name": "tiny-grouped", "source": "test", "N": 2, "in": [5], "c_in": 6, "c_out": 4, "kernel": [4],
     "stride": [2], "padding": [1], "output_padding": [0], "groups": 2},
]}


@pytest.mark.cpu_only
def test_cli_runs_and_writes_results(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("JAXSEG_COMMIT", raising=False)
  layers = tmp_path / "layers.json"
  layers.write_text(json.dumps(LAYERS))
  out, png = tmp_path / "r.json", tmp_path / "r.png"
  cli.main(["--layers", str(layers), "--impls", "jaxseg,xla,naive", "--repeats", "3", "--budget", "0.01",
            "--json", str(out), "--plot", str(png), "--no-progress"])
  table = capsys.readouterr().out
  assert all(layer["name"] in table for layer in LAYERS["layers"]) and "geomean" in table
  result = json.loads(out.read_text())
  assert result["schema"] == "jaxseg-bench/3" and result["config"]["repeats"] == 3
  # Provenance: when, on what code and machine, under what load.
  prov = result["provenance"]
  assert prov["date"].startswith("20") and prov["date"].endswith("+00:00")
  assert prov["commit"] is None or len(prov["commit"]) == 40
  assert prov["cores_usable"] >= 1 and isinstance(prov["cpu_flags"], list)
  if hasattr(os, "getloadavg"):
    assert len(prov["load_average"]["start"]) == 3 and len(prov["load_average"]["end"]) == 3
  # The report renders it, with every row.
  text = report.render(report._parser().parse_args([str(out)]))
  assert f"Recorded {prov['date'][:10]}" in text and "load average" in text and "load average not" not in text
  # The commit is known from jaxseg's own checkout (an editable install) and honestly absent from a wheel's.
  source_tree = os.path.exists(os.path.join(os.path.dirname(os.path.dirname(jaxseg.__file__)), ".git"))
  assert (prov["commit"] is not None) == source_tree
  assert (f"commit {prov['commit'][:7]}" if source_tree else "commit not recorded") in text
  assert all(layer["name"] in text for layer in LAYERS["layers"])
  rows = result["rows"]
  assert [(r["layer"], r["pass"]) for r in rows] == [(l["name"], p) for l in LAYERS["layers"]
                                                    for p in ("forward", "input_grad", "weight_grad")]
  for r in rows:
    assert all(r["ms"][impl] > 0 for impl in ("jaxseg", "xla", "naive")) and r["ms"]["torch"] is None
    assert r["speedup_vs_xla"] == pytest.approx(r["ms"]["xla"] / r["ms"]["jaxseg"])
    assert r["temp_bytes"]["jaxseg"] is not None
  assert png.stat().st_size > 0


def test_short_pass_names(tmp_path):
  layers = tmp_path / "layers.json"
  layers.write_text(json.dumps({"layers": LAYERS["layers"][:1]}))
  out = tmp_path / "r.json"
  cli.main(["--layers", str(layers), "--impls", "jaxseg", "--passes", "dw,fwd", "--repeats", "3", "--budget",
            "0.01", "--json", str(out), "--no-progress"])
  assert [r["pass"] for r in json.loads(out.read_text())["rows"]] == ["weight_grad", "forward"]


class FakeClock:
  """A clock that moves only when the code under test calls something or idles."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now

  def sleep(self, seconds):
    self.now += seconds


def test_interleaved_timing():
  """Every implementation is timed in every round, the medians are its own calls' durations, and timing stops
  at the round limit or once the budget is spent (at least 3 rounds)."""
  clock = FakeClock()
  calls = {"slow": 0, "fast": 0}

  def make(name, seconds):
    def fn():
      calls[name] += 1
      clock.now += seconds
    return fn

  # Durations that are exact in binary, so the fake clock's sums are too.
  fns = {"slow": make("slow", 2 ** -8), "fast": make("fast", 2 ** -10)}
  timing = dict(slice_s=2 ** -7, gap_s=2 ** -8, clock=clock, sleep=clock.sleep)
  medians = cli._time(fns, rounds=4, budget_s=10.0, **timing)
  assert medians == {"slow": 2 ** -8, "fast": 2 ** -10}
  # One warm-up each, then 4 rounds of slice_s / call time calls: 2 of the slow one, 8 of the fast one.
  assert calls == {"slow": 1 + 4 * 2, "fast": 1 + 4 * 8}
  # A budget spent after the first round still gives 3 rounds, and no more.
  calls.update(slow=0, fast=0)
  cli._time(fns, rounds=10, budget_s=2 ** -10, **timing)
  assert calls == {"slow": 1 + 3 * 2, "fast": 1 + 3 * 8}


@pytest.mark.parametrize("argv,named", [
    (["--passes", "forward,bogus"], "bogus"),
    (["--impls", "jaxseg,nope"], "nope"),
    (["--repeats", "2"], "--repeats"),
])
def test_bad_arguments_are_named(argv, named, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  assert named in capsys.readouterr().err


def test_unknown_layer_lists_the_layers(tmp_path):
  layers = tmp_path / "layers.json"
  layers.write_text(json.dumps(LAYERS))
  with pytest.raises(SystemExit) as e:
    cli.main(["--layers", str(layers), "--only", "tiny-2d,nope", "--no-progress"])
  message = str(e.value.code)
  assert "nope" in message and all(layer["name"] in message for layer in LAYERS["layers"])


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_recorded_files_carry_provenance(path):
  """Every recorded run says when and on what code it was recorded; runs recorded before the load was
  measured say so."""
  result = report.load(str(path))
  prov = result["provenance"]
  assert prov["date"] and len(prov["commit"]) == 40
  line = report.provenance(result)
  assert prov["date"][:10] in line and prov["commit"][:7] in line and result["machine"]["cpu"] in line
  if prov["load_average"] is None:
    assert "load average not recorded" in line


def test_docs_tables_come_from_the_recorded_files():
  """The README's and the docs' tables are what `python -m jaxseg.bench report` gives from the recorded files
  (regenerate: python -m jaxseg.bench report --update README.md docs/performance.md)."""
  pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
  marked = [p for p in pages if report.BEGIN.search(p.read_text())]
  assert ROOT / "README.md" in marked and ROOT / "docs" / "performance.md" in marked
  assert report.main(["--root", str(ROOT), "--check", *map(str, marked)]) == 0


def test_report_detects_a_stale_table(tmp_path, capsys):
  page = tmp_path / "page.md"
  src = os.path.relpath(RESULTS[0], tmp_path)
  page.write_text(f"<!-- bench report: --headline {src} -->\n| stale |\n<!-- end bench report -->\n")
  assert report.main(["--root", str(tmp_path), "--check", str(page)]) == 1
  assert "out of date" in capsys.readouterr().err
  assert report.main(["--root", str(tmp_path), "--update", str(page)]) == 0
  assert report.main(["--root", str(tmp_path), "--check", str(page)]) == 0
  assert "| stale |" not in page.read_text() and RESULTS[0].name in page.read_text()


def test_report_command_prints_a_table(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["report", "--root", str(ROOT), "benchmarks/results/cpu-epyc-zen4-2core.json"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "| ebgan-mnist-g1 | forward |" in out and "geometric mean speed-up over XLA" in out


def test_report_refuses_other_json(tmp_path):
  other = tmp_path / "x.json"
  other.write_text(json.dumps({"schema": "something/1"}))
  with pytest.raises(ValueError, match="not a jaxseg bench result"):
    report.load(str(other))


def test_provenance_commit_from_the_environment(monkeypatch):
  # An installed wheel has no checkout to ask: JAXSEG_COMMIT names the commit it was built from.
  monkeypatch.setenv("JAXSEG_COMMIT", "0123456789abcdef0123456789abcdef01234567")
  prov = cli._provenance()
  assert prov["commit"] == "0123456789abcdef0123456789abcdef01234567" and prov["dirty"] is None
