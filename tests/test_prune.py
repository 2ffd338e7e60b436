"""The prune stage: real tfmot pruning of the small digits CNN to 50% and 80%, then int8."""

import gzip

import pytest

from kfopt import bench, formats, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.optimize import prune


@pytest.fixture(scope="module")
def pruned(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "variants"
    metrics = prune.run(digits_small["baseline"], digits_small["dataset"], out, sparsities=[0.5, 0.8], epochs=8,
                        calibration_samples=64, accuracy_budget=2.0, min_agreement=0.95)
    return out, metrics


def test_schedule_ends_on_a_multiple_of_the_frequency_before_training_does():
    for samples, epochs in ((325, 2), (2334, 8), (31, 3), (10_000, 4)):
        steps = prune.schedule_steps(samples, epochs)
        assert steps["end_step"] % steps["frequency"] == 0
        assert 0 < steps["end_step"] < steps["total_steps"]


def test_target_sparsity_is_reached_per_layer_and_overall(pruned):
    out, metrics = pruned
    assert {variant.read(d).name for d in variant.discover(out)} == {
        "pruned_50", "pruned_50_tflite_int8", "pruned_80", "pruned_80_tflite_int8"}
    for target, name in ((0.5, "pruned_50"), (0.8, "pruned_80")):
        meta = variant.read(out / name)
        sparsity = meta.extra["sparsity"]
        assert sparsity["overall"] == pytest.approx(target, abs=0.01)
        assert sparsity["layers"] and all(s == pytest.approx(target, abs=0.01) for s in sparsity["layers"].values())
        assert meta.params["end_step"] % meta.params["frequency"] == 0
        assert meta.technique == "prune" and meta.parent == "baseline" and meta.format == "savedmodel"
        assert metrics[f"{name}_sparsity"] == sparsity["overall"]


def test_pruned_models_stay_accurate(pruned, digits_small):
    out, _ = pruned
    x, y = ds_mod.read(digits_small["dataset"]).split("test")
    base = bench.predict_all(formats.load(digits_small["baseline"]), x)
    for name in ("pruned_50", "pruned_50_tflite_int8", "pruned_80", "pruned_80_tflite_int8"):
        check = verify.compare(bench.predict_all(formats.load(out / name), x), base, y, "multiclass", 5.0, 0.9)
        assert check["passed"], (name, check)


def test_pruned_80_int8_gzipped_is_8x_smaller_than_the_fp32_savedmodel(pruned, digits_small):
    out, _ = pruned
    base = variant.read(digits_small["baseline"])
    base_gzip = bench.sizes(digits_small["baseline"], base)["size_gzip_bytes"]
    weights = b"".join((digits_small["baseline"] / f).read_bytes() for f in sorted(base.files) if "variables" in f)
    int8 = variant.read(out / "pruned_80_tflite_int8")
    assert int8.parent == "pruned_80" and int8.precision == "int8" and int8.technique == "prune+quantize"
    assert int8.extra["size_gzip_bytes"] == bench.sizes(out / "pruned_80_tflite_int8", int8)["size_gzip_bytes"]
    assert base_gzip / int8.extra["size_gzip_bytes"] >= 8
    assert len(gzip.compress(weights, 9)) / int8.extra["size_gzip_bytes"] >= 8  # weights alone, too
    # pruning shows after gzip: the fp32 file is as large as before, its gzip much smaller
    pruned80 = variant.read(out / "pruned_80")
    assert pruned80.extra["size_gzip_bytes"] < 0.5 * base_gzip


def test_switched_off_writes_skipped_pairs(digits_small, tmp_path):
    prune.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "p", enabled=False, sparsities=[0.8])
    metas = [variant.read(d) for d in variant.discover(tmp_path / "p")]
    assert sorted(m.name for m in metas) == ["pruned_80", "pruned_80_tflite_int8"] and all(m.skipped for m in metas)
