"""Training, export and the benchmark harness on real models (the session's small digits run)."""

import json
import shutil

import numpy as np
import pytest

from kfopt import bench, export, formats, select, variant, verify
from kfopt.data import dataset
from kfopt.errors import ArtifactError, ConfigError


@pytest.fixture(scope="module")
def exported(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "variants"
    export.run(digits_small["baseline"], out)
    return out


def test_baseline_variant_contract(digits_small):
    meta = variant.read(digits_small["baseline"])
    assert (meta.format, meta.precision, meta.technique, meta.task) == ("savedmodel", "fp32", "train", "multiclass")
    assert meta.input.shape == [None, 8, 8, 1] and meta.output.shape == [None, 10]
    assert meta.files and all(len(h) == 64 for h in meta.files.values())
    assert meta.extra["test_accuracy"] > 0.7


def test_every_format_answers_like_the_baseline(digits_small, exported):
    x, y = dataset.read(digits_small["dataset"]).split("test")
    base = bench.predict_all(formats.load(digits_small["baseline"]), x)
    assert base.shape == (len(x), 10) and np.allclose(base.sum(axis=1), 1, atol=1e-4)
    for vdir in variant.discover(exported):
        runner = formats.load(vdir, threads=1)
        probs = bench.predict_all(runner, x, batch=17)  # odd batch: dynamic batch dimension works
        check = verify.compare(probs, base, y, "multiclass", 0.5, 0.97)
        assert check["max_abs_error"] < 1e-4 and check["agreement"] == 1.0 and check["passed"], vdir.name
        assert runner.meta.parent == "baseline"


def test_mixed_bfloat16_training_exports_float32(tmp_path, digits_small):
    from kfopt.models import train

    metrics = train.run(digits_small["dataset"], tmp_path / "bf16", epochs=2, mixed_precision="mixed_bfloat16")
    assert metrics["test_accuracy"] > 0.3
    runner = formats.load(tmp_path / "bf16")
    x = dataset.read(digits_small["dataset"]).split("test")[0][:4]
    assert runner.predict(x).dtype == np.float32
    assert variant.read(tmp_path / "bf16").params["mixed_precision"] == "mixed_bfloat16"


def test_early_stopping_stops_before_max_epochs(digits_small, tmp_path):
    from kfopt.models import train

    metrics = train.run(digits_small["dataset"], tmp_path / "m", epochs=200, patience=1, learning_rate=0.01)
    assert metrics["epochs"] < 200
    assert len(metrics["history"]["val_loss"]) == metrics["epochs"]


def test_unknown_architecture_and_bad_precision(digits_small, tmp_path):
    from kfopt.models import train

    with pytest.raises(ConfigError, match="Unknown model architecture 'nope'"):
        train.run(digits_small["dataset"], tmp_path / "x", architecture="nope", epochs=1)
    with pytest.raises(ConfigError, match="mixed_precision"):
        train.run(digits_small["dataset"], tmp_path / "y", mixed_precision="fp8", epochs=1)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_benchmark_rows_isolated_and_honest(digits_small, exported, tmp_path):
    out = tmp_path / "bench"
    summary = bench.run([digits_small["baseline"], exported], digits_small["dataset"], out,
                        baseline_dir=digits_small["baseline"], batch_sizes=[1, 8], warmup=2, min_runs=6,
                        max_seconds=0.2, log=lambda _: None)
    rows = {r["name"]: r for r in summary["results"]}
    assert set(rows) == {"baseline", "tflite_fp32", "onnx_fp32"}
    for r in rows.values():
        assert r["status"] == "ok" and r["latency"]["8"]["throughput"] > 0
        assert r["peak_rss_mb"] > 50  # measured in the worker process, which loaded a runtime
        assert r["threads"] == 1 and set(r["by_threads"]) == {"1"}  # no targets: the first thread count only
        assert r["by_threads"]["1"]["latency"] == r["latency"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["environment"]["cores"] >= 1 and saved["settings"]["threads"] == [1] and saved["serving"] == {}
    assert (out / "predictions" / "tflite_fp32.npy").is_file()


def test_benchmark_reports_a_corrupted_variant_as_failed(digits_small, exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported / "onnx_fp32", broken / "onnx_fp32")
    (broken / "onnx_fp32" / "model.onnx").write_bytes(b"not a model")
    summary = bench.run([broken], digits_small["dataset"], tmp_path / "b", baseline_dir=digits_small["baseline"],
                        batch_sizes=[1], warmup=1, min_runs=6, max_seconds=0.1, log=lambda _: None)
    (row,) = [r for r in summary["results"] if r["name"] == "onnx_fp32"]
    assert row["status"] == "failed" and "checksum" in row["reason"]
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        formats.load(broken / "onnx_fp32")


def test_gpu_benchmark_without_gpu_says_so(digits_small, tmp_path):
    trt = tmp_path / "trt"
    variant.write_skipped(trt / "trt_fp16", "trt_fp16", "tensorrt", "gpu", "TensorRT not installed",
                          technique="tensorrt")
    summary = bench.run([trt], digits_small["dataset"], tmp_path / "g", baseline_dir=digits_small["baseline"],
                        batch_sizes=[1], hardware="gpu", log=lambda _: None)
    (row,) = summary["results"]
    assert row["status"] == "skipped" and row["reason"] == "TensorRT not installed"


def test_median_ci_shrinks_with_stable_samples():
    rng = np.random.default_rng(0)
    noisy = rng.lognormal(0, 0.5, 200)
    stable = 1 + rng.normal(0, 0.001, 200)
    assert bench.median_ci(stable) < 0.01 < bench.median_ci(noisy)
    assert bench.median_ci(np.ones(3)) == float("inf")


def _row(name, fmt, p50, acc_delta=0.0, passed=True, size=1000, hardware="cpu"):
    return {"name": name, "format": fmt, "hardware": hardware, "status": "ok", "accuracy": 0.9 + acc_delta / 100,
            "latency": {"1": {"p50_ms": p50, "throughput": 1000 / p50}, "64": {"p50_ms": p50 * 10,
                                                                              "throughput": 6400 / p50}},
            "size_bytes": size, "size_gzip_bytes": size // 2,
            "verification": {"passed": passed, "accuracy_delta_pp": acc_delta, "reason": "x" if not passed else "ok"}}


def test_selection_picks_fastest_verified_and_explains():
    rows = [_row("fast_bad", "tflite", 0.1, -3, passed=False), _row("fast", "tflite", 0.2, size=400),
            _row("slow", "onnx", 0.5), _row("sm", "savedmodel", 2.0, size=5000)]
    choice = select.choose(rows, ["cpu", "edge", "gpu"])
    assert choice["cpu"]["chosen"] == "fast" and choice["cpu"]["runner_up"] == "slow"
    assert choice["edge"]["chosen"] == "fast"  # smallest gzip among tflite variants that passed
    assert choice["gpu"]["chosen"] is None and "gpu" in choice["gpu"]["reason"]
    assert set(select.pareto_front(rows)) == {"fast_bad", "fast"}
