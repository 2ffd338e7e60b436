"""A technique that cannot handle a model fails alone: a `failed` variant with the reason, and the run goes on.

The model is one kfopt did not build and that its techniques cannot handle, for real: the digits
pixels binned (Discretization), looked up (IntegerLookup, a hash table) and counted
(CategoryEncoding) before a Dense head. LiteRT has no builtin for the count (tf.DenseBincount), so
every TFLite conversion breaks (export, quantize, and prune's int8 step after the pruning itself
worked); XLA cannot compile the lookup table; no channel count of it can shrink, so distillation has
no smaller student. TensorRT gets an ONNX file cut off half-way (under a valid checksum), which it
cannot read. Each stage runs through the component body (kfopt.stages.execute) with real KFP
artifact objects, exactly as a KFP task calls it; then the real benchmark and report run on what
the stages left.
"""

import dataclasses
import errno
import html
import json
from pathlib import Path

import pytest
from kfp import dsl

from kfopt import bench, config, report, select, stages, variant
from kfopt.data import preprocess
from kfopt.formats import onnx as onnx_fmt
from kfopt.models import train
from kfopt.stage import failure_reason, optional_stage


def _keras():
    from kfopt.tfenv import keras

    return keras()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    k = _keras()
    root = tmp_path_factory.mktemp("hostile")
    preprocess.run("digits", root / "dataset", limit=300, seed=3, normalize="none")
    x = k.layers.Input((8, 8, 1), name="input")
    h = k.layers.Flatten()(x)
    h = k.layers.Discretization(bin_boundaries=[2.0, 6.0, 10.0, 14.0])(h)
    h = k.layers.IntegerLookup(vocabulary=[0, 1, 2, 3, 4], num_oov_indices=1)(h)
    h = k.layers.CategoryEncoding(num_tokens=6, output_mode="count")(h)
    model = k.Model(x, k.layers.Dense(10, activation="softmax")(h))
    model.save(root / "binned.keras")
    train.run(root / "dataset", root / "baseline", model_uri=str(root / "binned.keras"))
    return root


def _knob(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def run_task(name: str, out: Path, inputs: dict[str, Path], **settings):
    """Call stage `name`'s component body as KFP does: knobs (config defaults + `settings`), real artifacts."""
    stage = stages.get(name)
    cfg = config.RunConfig()
    arguments = {key: settings.get(key, _knob(cfg, path)) for key, path in stage.knobs.items()}
    arguments.update({key: dsl.Model(uri=str(path)) for key, path in inputs.items()})
    for output, kind in stage.outputs.items():
        arguments[output] = (dsl.Metrics if kind == "Metrics" else dsl.Model)(uri=str(out / output))
    result = stages.execute(name, arguments)  # a SystemExit here would be a failed task: the run stops
    return result, out / next(iter(stage.outputs)), out / "metrics"


def _truncated_onnx_exports(hostile, tmp_path) -> Path:
    """An exports set whose onnx_fp32 is a real ONNX file cut off half-way (its checksum is the cut file's)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Softmax", ["input"], ["output"])], "cut",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])])
    whole = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(whole))
    vdir = tmp_path / "exports" / "onnx_fp32"
    vdir.mkdir(parents=True)
    (vdir / onnx_fmt.FILENAME).write_bytes(whole[: len(whole) // 2])
    baseline = variant.read(hostile / "baseline")
    variant.write(vdir, dataclasses.replace(baseline, name="onnx_fp32", format="onnx", parent="baseline", files={}))
    return tmp_path / "exports"


CASES = {  # stage → (settings that keep it short, the exception it meets)
    "export": ({}, "ConverterError"),
    "quantize": ({"qat": False, "calibration_samples": 32}, "ConverterError"),
    "prune": ({"sparsities": [0.5], "epochs": 2, "calibration_samples": 32}, "ConverterError"),
    "distill": ({"epochs": 1, "calibration_samples": 32}, "ModelError"),
    "xla": ({"batch_sizes": [1]}, "ValueError"),
    "tensorrt": ({"int8": False}, "DecodeError"),
}


@pytest.fixture(scope="module")
def failed_sets(hostile, tmp_path_factory):
    """Every stage of CASES run once on the hostile model: {stage: (variants folder, metrics file, stderr)}."""
    capture = pytest.MonkeyPatch()
    out = {}
    for name, (settings, _) in CASES.items():
        task = tmp_path_factory.mktemp(name)
        if name == "tensorrt":
            inputs = {"exports_dir": _truncated_onnx_exports(hostile, task)}
        else:
            inputs = {"baseline_dir": hostile / "baseline", "dataset_dir": hostile / "dataset"}
            inputs = {key: inputs[key] for key in stages.get(name).inputs}
        err = task / "stderr.txt"
        with open(err, "w") as handle:
            capture.setattr("sys.stderr", handle)
            _, variants, metrics = run_task(name, task, inputs, **settings)
            capture.undo()
        out[name] = (variants, metrics, err.read_text())
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_stage_leaves_one_failed_variant_with_the_reason(failed_sets, name):
    variants, metrics, stderr = failed_sets[name]
    (vdir,) = variant.discover(variants)
    meta = variant.read(vdir)
    assert meta.failed and meta.name == name and meta.technique == name and meta.format == "n/a"
    assert meta.reason.startswith(f"{name} stage: ") and CASES[name][1] in meta.reason
    assert meta.extra["error"] in meta.reason and "\n" not in meta.reason
    assert not [p for p in variants.parent.iterdir() if ".partial-" in p.name]  # nothing half-made is left
    assert f"kfopt {name}: failed: {meta.reason}" in stderr  # the terminal line (local_run shows "kfopt …")
    assert "Traceback" in stderr  # the full story goes to the task log
    assert json.loads(metrics.read_text()) == {"failed": 1.0}  # metrics written: local caching keeps working


def test_a_failed_variant_has_no_model_to_load(failed_sets):
    from kfopt import formats
    from kfopt.errors import ArtifactError

    with pytest.raises(ArtifactError, match="'prune' was failed .*prune stage: .*no model to run"):
        formats.load(failed_sets["prune"][0] / "prune")


def test_the_reasons_name_what_broke(failed_sets):
    reasons = {name: variant.read(variant.discover(folder)[0]).reason for name, (folder, _, _) in failed_sets.items()}
    assert "FlatBuffer" in reasons["quantize"] and "FlatBuffer" in reasons["export"]
    assert "HLO" in reasons["xla"] and "onnx.ModelProto" in reasons["tensorrt"]
    assert "No channel count of this architecture can shrink" in reasons["distill"]
    assert reasons["prune"].startswith("prune stage: ConverterError")  # pruning worked; its int8 TFLite did not
    assert not [r for r in reasons.values() if "site-packages" in r]  # converters' source locations are noise


def test_user_errors_still_stop_the_run(hostile, tmp_path, capsys):
    """A wrong setting is the user's to fix, in every stage: one clear line, exit 1, nothing written."""
    with pytest.raises(SystemExit) as stop:
        run_task("prune", tmp_path, {"baseline_dir": hostile / "baseline", "dataset_dir": hostile / "dataset"},
                 sparsities=[1.5])
    assert stop.value.code == 1
    assert "kfopt prune: Pruning sparsity must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "variants").exists()


def test_a_full_disk_stops_the_run_and_writes_no_failed_variant(tmp_path, capsys):
    """ENOSPC is not the technique's fault (the classification only: tests/test_disk_full.py fills real disks)."""
    with pytest.raises(SystemExit) as stop, optional_stage("quantize", tmp_path / "variants"):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "work" / "model.onnx"))
    assert stop.value.code == 1 and "No space left on" in capsys.readouterr().err
    assert not (tmp_path / "variants").exists()


def test_a_completed_folder_is_replaced_when_the_stage_fails_after_it(tmp_path, capsys):
    out = tmp_path / "variants"
    with optional_stage("xla", out):
        with variant.staged_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
        raise KeyError("late")
    assert [p.name for p in out.iterdir()] == ["xla"]
    assert variant.read(out / "xla").reason == "xla stage: KeyError: 'late'"
    assert failure_reason("prune", ValueError("")) == "prune stage: ValueError: (no message)"


def test_benchmark_and_report_show_failed_rows_and_never_choose_them(hostile, failed_sets, tmp_path):
    roots = [hostile / "baseline"] + [folder for folder, _, _ in failed_sets.values()]
    rows = []
    for hardware in ("cpu", "gpu"):
        summary = bench.run(roots, hostile / "dataset", tmp_path / f"bench_{hardware}",
                            baseline_dir=hostile / "baseline", batch_sizes=[1], warmup=2, min_runs=5,
                            max_seconds=0.1, hardware=hardware, log=lambda line: None)
        rows += summary["results"]
    failed = {r["name"]: r for r in rows if r["status"] == "failed"}
    assert set(failed) == set(CASES)  # once each (by the cpu benchmark), not once per hardware
    assert all(r["hardware"] == "n/a" and r["reason"].startswith(f"{n} stage: ") for n, r in failed.items())
    assert next(r for r in rows if r["name"] == "baseline")["status"] == "ok"

    rep = report.build([tmp_path / "bench_cpu", tmp_path / "bench_gpu"], "binned", ["cpu", "edge", "gpu"])
    assert rep["choices"]["cpu"]["chosen"] == "baseline"
    assert all(c["chosen"] not in failed for c in rep["choices"].values())
    assert not [r for r in rows if select.passed(r) and r["name"] in failed]
    md, text = report.markdown(rep), report.text_table(rep)
    page = report.html_page(rep, md)
    for name, row in failed.items():
        assert f"| {name} | n/a | n/a | n/a |" in md and "FAILED" in md.split(f"| {name} |", 1)[1].splitlines()[0]
        assert f"- {name}: {row['reason']}" in md.split("## Failed", 1)[1]
        assert f"{name}: {row['reason']}" in text.split("Failed (the run went on without them):", 1)[1]
        assert html.escape(row["reason"]) in page
    assert not any(line.startswith(tuple(failed)) for line in report.not_measured(rep))  # listed once


SMALL_RUN = ["--set", "data.limit=300", "--set", "augment.enabled=false", "--set", "quantize.qat=false",
             "--set", "quantize.calibration_samples=32", "--set", "prune.sparsities=[0.5]", "--set", "prune.epochs=2",
             "--set", "distill.epochs=1", "--set", "xla.batch_sizes=[1]", "--set", "bench.batch_sizes=[1]",
             "--set", "bench.max_seconds=0.1"]


@pytest.mark.slow
def test_a_local_run_goes_on_past_every_stage_that_fails(hostile, tmp_path, capsys):
    """Through the real kfp.local runner: each failing stage says why on the terminal; the run finishes."""
    from kfopt.cli import main

    runs = tmp_path / "runs"
    assert main(["run", "--runs-dir", str(runs), "--model", str(hostile / "binned.keras"), *SMALL_RUN]) == 0
    out = capsys.readouterr().out
    broken = {"export", "quantize", "prune", "distill", "xla"}
    for name in broken:
        assert f"kfopt {name}: failed: {name} stage: " in out, name
    run_dir = (runs / "latest").resolve()
    rep = json.loads((run_dir / "report.json").read_text())
    assert {r["name"] for r in rep["rows"] if r["status"] == "failed"} == broken
    trt = {r["name"]: r for r in rep["rows"] if r["name"].startswith("trt_")}
    assert {n: r["status"] for n, r in trt.items()} == {"trt_fp16": "skipped", "trt_int8": "skipped"}
    assert trt["trt_fp16"]["reason"].startswith("its source stage failed: export stage: ")
    assert trt["trt_int8"]["reason"].startswith("its source stage failed: quantize stage: ")
    assert rep["choices"]["cpu"]["chosen"] == "baseline"
    assert "## Failed (the run went on without them)" in (run_dir / "report.md").read_text()
