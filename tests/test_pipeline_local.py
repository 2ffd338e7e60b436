"""The whole pipeline through the real kfp.local runner, on a small slice, checked via its report."""

import json
import re
from pathlib import Path

import pytest

from kfopt import variant
from kfopt.cli import main

pytestmark = pytest.mark.slow

SMALL = ["--set", "data.limit=400", "--set", "train.epochs=4", "--set", "bench.max_seconds=0.2",
         "--set", "augment.factor=0.5",  # searches kept small here: the full spaces are what make run exercises
         "--set", "prune.sparsities=[0.5, 0.8]", "--set", "distill.student_width=[0.5, 0.25]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["run", "--runs-dir", str(runs), *SMALL]) == 0
    return (runs / "latest").resolve()


def test_report_has_real_numbers(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    rows = {(r["name"], r["hardware"]): r for r in report["rows"]}
    measured = [r for r in rows.values() if r["status"] == "ok"]
    assert {"baseline", "tflite_fp32", "onnx_fp32"} <= {r["name"] for r in measured}
    for r in measured:
        assert r["accuracy"] > 0.5  # 10 classes: chance is 0.1
        for stats in r["latency"].values():
            assert 0 < stats["p50_ms"] <= stats["p99_ms"] and stats["samples"] >= 5
        assert set(r["latency"]) == {"1", "64"}
        assert 0 <= r["verification"]["agreement"] <= 1 and "passed" in r["verification"]
    for name in ("tflite_fp32", "onnx_fp32", "xla"):  # same weights, other runtime: same answers
        assert rows[(name, "cpu")]["verification"]["agreement"] == 1.0, name
    assert report["choices"]["cpu"]["chosen"] in {r["name"] for r in measured}
    assert report["environments"]["cpu"]["cores"] >= 1


def test_sizes_match_the_variant_files(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    for vdir in variant.discover(run_dir / "pipeline"):
        meta = variant.read(vdir)
        row = next((r for r in report["rows"] if r["name"] == meta.name and r["status"] == "ok"), None)
        if row is None:
            continue
        assert row["size_bytes"] == sum((vdir / f).stat().st_size for f in meta.files)


def test_report_files_and_kfp_artifacts(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "Choice per target" in html
    md = (run_dir / "report.md").read_text()
    assert "| baseline |" in md
    details = md.split("## Technique details", 1)[1]
    assert re.search(r"pruned_\d\d: sparsity 0\.\d", details) and "kept in float" in details  # the kept sparsity
    pipeline_root = run_dir / "pipeline"
    metrics = list(pipeline_root.rglob("report/metrics"))
    assert metrics and "baseline@cpu.accuracy" in json.loads(metrics[0].read_text())


def test_report_command_rerenders_and_reprints(run_dir, capsys):
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "Choice per target" in (run_dir / "report.html").read_text()
    out = capsys.readouterr().out
    assert "tflite_fp32" in out and "Choice per target" in out


def test_report_of_missing_or_unfinished_run(tmp_path, capsys):
    assert main(["report", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "No run 'nope'" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["report", "half", "--runs-dir", str(tmp_path)]) == 2
    assert "did not finish" in capsys.readouterr().err


def test_failed_stage_is_one_message_and_no_run_left(tmp_path, capsys):
    """A stage that fails before any other finished leaves no run folder, only its log."""
    data = tmp_path / "tiny.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    assert main(["run", "--runs-dir", str(tmp_path), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "kfopt preprocess:" in err and "at least 50" in err and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("digits_cnn-")]
    (log,) = tmp_path.glob("digits_cnn-*.failed.log")
    assert "at least 50" in log.read_text() and str(log) in err


def test_unknown_architecture_fails_before_running(tmp_path, capsys):
    assert main(["run", "--runs-dir", str(tmp_path), "--set", "model.architecture=vgg"]) == 2
    assert "Unknown model architecture 'vgg'" in capsys.readouterr().err
