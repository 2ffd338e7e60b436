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
        f"pruned_{n}{suffix}" for n in (50, 80) for suffix in ("", "_tflite_int8", "_onnx_fp32", "_onnx_int8")}
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
    for name in ("pruned_50", "pruned_50_tflite_int8", "pruned_50_onnx_int8", "pruned_80", "pruned_80_tflite_int8",
                 "pruned_80_onnx_int8"):
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


def test_switched_off_writes_skipped_stand_ins_for_the_whole_chain(digits_small, tmp_path):
    prune.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "p", enabled=False, sparsities=[0.8])
    metas = {variant.read(d).name: variant.read(d) for d in variant.discover(tmp_path / "p")}
    assert sorted(metas) == ["pruned_80", "pruned_80_onnx_fp32", "pruned_80_onnx_int8", "pruned_80_tflite_int8"]
    assert all(m.skipped for m in metas.values())
    assert (metas["pruned_80_onnx_int8"].format, metas["pruned_80_tflite_int8"].target) == ("onnx", "edge")


@pytest.fixture(scope="module")
def preprocessing_model(tmp_path_factory):
    """A model kfopt did not build that scales and normalizes its own input (raw digits pixels, 0..16)."""
    from kfopt.data import preprocess
    from kfopt.models import train
    from kfopt.tfenv import keras

    k = keras()
    root = tmp_path_factory.mktemp("preprocessing")
    preprocess.run("digits", root / "dataset", limit=300, seed=3, normalize="none")
    k.utils.set_random_seed(0)
    x = k.layers.Input((8, 8, 1), name="input")
    h = k.layers.Rescaling(1 / 16)(x)
    h = k.layers.Normalization(mean=0.3, variance=0.1)(h)
    h = k.layers.Conv2D(8, 3, padding="same", name="conv")(h)
    h = k.layers.BatchNormalization()(h)
    h = k.layers.ReLU()(h)
    model = k.Model(x, k.layers.Dense(10, activation="softmax", name="head")(k.layers.Flatten()(h)))
    model.compile(k.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(*ds_mod.read(root / "dataset").split("train"), epochs=3, batch_size=32, verbose=0)
    model.save(root / "pre.keras")
    train.run(root / "dataset", root / "baseline", model_uri=str(root / "pre.keras"))
    return root


def test_only_layers_with_prunable_kernels_are_wrapped(preprocessing_model):
    """tfmot's default wraps every layer and refuses Rescaling/Normalization; the stage prunes the kernels only."""
    root = preprocessing_model
    prune.run(root / "baseline", root / "dataset", root / "pruned", sparsities=[0.5], epochs=2, calibration_samples=32,
              accuracy_budget=100.0, min_agreement=0.0)
    meta = variant.read(root / "pruned" / "pruned_50")
    assert sorted(meta.extra["sparsity"]["layers"]) == ["conv", "head"]
    assert all(s == pytest.approx(0.5, abs=0.01) for s in meta.extra["sparsity"]["layers"].values())
    from kfopt.frameworks import keras as keras_adapter

    kinds = [type(layer).__name__ for layer in keras_adapter.load(root / "pruned" / "pruned_50").layers]
    assert {"Rescaling", "Normalization", "BatchNormalization"} <= set(kinds)  # left in place, unwrapped
    assert variant.read(root / "pruned" / "pruned_50_tflite_int8").precision == "int8"
    x, y = ds_mod.read(root / "dataset").split("test")
    probs = bench.predict_all(formats.load(root / "pruned" / "pruned_50"), x)
    assert verify.quality(probs, y, "multiclass")["accuracy"] > 0.3  # it still learns from raw pixels (chance 0.1)


def test_a_model_with_nothing_to_prune_is_a_model_error(preprocessing_model, tmp_path):
    from kfopt.errors import ModelError
    from kfopt.tfenv import keras

    k = keras()
    x = k.layers.Input((8, 8, 1), name="input")
    model = k.Model(x, k.layers.Softmax()(k.layers.Flatten()(k.layers.Rescaling(1 / 16)(x))[:, :10]))
    data = ds_mod.read(preprocessing_model / "dataset")
    with pytest.raises(ModelError, match="no layer whose weights tfmot can prune"):
        prune.prune_model(model, data, 0.5, 2)
