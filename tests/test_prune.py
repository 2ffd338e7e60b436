"""The prune stage: real tfmot pruning of the small digits CNN searched over sparsity, then int8 of the kept one."""

import gzip

import pytest

from kfopt import bench, formats, search, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.optimize import prune, prune_search


@pytest.fixture(scope="module")
def pruned(digits_small, tmp_path_factory):
    """Both points within a budget wide enough for the 75 validation rows (one row is 1.3 pp) and for the
    int8 children to spend what their pruned parent left, so the mechanics, not a row or two, are tested."""
    out = tmp_path_factory.mktemp("prune") / "variants"
    metrics = prune.run(digits_small["baseline"], digits_small["dataset"], out, sparsities=[0.8, 0.5], epochs=8,
                        calibration_samples=64, accuracy_budget=10.0, min_agreement=0.85, search_time_budget_s=600)
    return out, metrics


def test_schedule_ends_on_a_multiple_of_the_frequency_within_the_ramp():
    for samples, epochs in ((325, 2), (2334, 8), (31, 3), (10_000, 4), (40, 30)):
        steps = prune.schedule_steps(samples, epochs)
        assert steps["end_step"] % steps["frequency"] == 0
        assert 0 < steps["end_step"] <= steps["ramp_steps"] == steps["ramp_epochs"] * steps["steps_per_epoch"]
        assert steps["ramp_epochs"] >= 1 and steps["max_recovery_epochs"] >= 1
        assert steps["ramp_epochs"] + steps["max_recovery_epochs"] == epochs


def test_search_keeps_only_the_most_aggressive_passing_sparsity(pruned):
    out, metrics = pruned
    assert {variant.read(d).name for d in variant.discover(out)} == {
        f"pruned_80{suffix}" for suffix in ("", "_tflite_int8", "_onnx_fp32", "_onnx_int8")}
    record = variant.read(out / "pruned_80").extra[search.KEY]
    assert (record["knob"], record["objective"], record["chosen"]) == ("sparsity", "size_gzip_bytes", "0.8")
    assert [p["setting"] for p in record["points"]] == ["0.5", "0.8"]  # bisection: the safest first
    assert all(p["passed"] for p in record["points"]) and record["not_tried"] == []
    half, most = record["points"]
    assert most["size_gzip_bytes"] < half["size_gzip_bytes"]  # what unstructured zeros buy
    assert all(p["seconds"] > 0 and 2 <= p["epochs_run"] <= 8 for p in record["points"])
    assert (metrics["prune_kept_sparsity"], metrics["prune_points_tried"]) == (0.8, 2)


def test_target_sparsity_is_reached_per_layer_and_the_recovery_stops_early(pruned):
    out, metrics = pruned
    meta = variant.read(out / "pruned_80")
    sparsity = meta.extra["sparsity"]
    assert sparsity["overall"] == pytest.approx(0.8, abs=0.01)
    assert sparsity["layers"] and all(s == pytest.approx(0.8, abs=0.01) for s in sparsity["layers"].values())
    assert meta.params["end_step"] % meta.params["frequency"] == 0 and meta.params["end_step"] <= meta.params["ramp_steps"]
    assert meta.technique == "prune" and meta.parent == "baseline" and meta.format == "savedmodel"
    assert metrics["pruned_80_sparsity"] == sparsity["overall"]
    recipe = meta.extra["recipe"]
    assert recipe["epochs_run"] == meta.params["ramp_epochs"] + recipe["recovery_epochs_run"] <= 8
    assert len(recipe["recovery_val_loss"]) == recipe["recovery_epochs_run"]
    # early stopping restores the best epoch: stopped epochs are the patience past it, or the maximum was run
    assert (recipe["recovery_epochs_run"] - recipe["best_recovery_epoch"] == prune.PATIENCE
            or recipe["recovery_epochs_run"] == meta.params["max_recovery_epochs"])
    rates = recipe["learning_rates"]
    assert rates[0] == pytest.approx(prune.LEARNING_RATE) and all(b <= a for a, b in zip(rates, rates[1:]))


def test_the_pruned_model_learns_mostly_the_baselines_answers():
    import numpy as np

    w = prune.HARD_WEIGHT
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    targets = prune.soft_targets(np.array([1, 2]), probs)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[0], [0.7 * (1 - w), w + 0.2 * (1 - w), 0.1 * (1 - w)], rtol=1e-6)
    assert targets[0].argmax() == 0 < w < 0.5  # where the baseline is sure, its answer outweighs the label
    binary = prune.soft_targets(np.array([0, 1]), np.array([0.2, 0.6], np.float32))  # one sigmoid unit
    np.testing.assert_allclose(binary, [[0.2 * (1 - w)], [w + 0.6 * (1 - w)]], rtol=1e-6)


def test_pruned_models_stay_accurate(pruned, digits_small):
    out, _ = pruned
    x, y = ds_mod.read(digits_small["dataset"]).split("test")
    base = bench.predict_all(formats.load(digits_small["baseline"]), x)
    for name in ("pruned_80", "pruned_80_tflite_int8", "pruned_80_onnx_int8"):
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
    """One set of stand-ins, named after the safest sparsity of the space (not one per sparsity searched)."""
    prune.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "p", enabled=False, sparsities=[0.8, 0.5])
    metas = {variant.read(d).name: variant.read(d) for d in variant.discover(tmp_path / "p")}
    assert sorted(metas) == ["pruned_50", "pruned_50_onnx_fp32", "pruned_50_onnx_int8", "pruned_50_tflite_int8"]
    assert all(m.skipped for m in metas.values())
    assert (metas["pruned_50_onnx_int8"].format, metas["pruned_50_tflite_int8"].target) == ("onnx", "edge")


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


@pytest.fixture(scope="module")
def tiny_budget(preprocessing_model):
    """The stage on the preprocessing model with a search budget spent by its first point."""
    root = preprocessing_model
    metrics = prune.run(root / "baseline", root / "dataset", root / "pruned", sparsities=[0.9, 0.5, 0.7], epochs=2,
                        calibration_samples=32, accuracy_budget=100.0, min_agreement=0.0, search_time_budget_s=0.001)
    return root / "pruned", metrics


def test_a_spent_time_budget_starts_no_second_point(tiny_budget):
    out, metrics = tiny_budget
    record = variant.read(out / "pruned_50").extra[search.KEY]
    assert [p["setting"] for p in record["points"]] == ["0.5"] and record["chosen"] == "0.5"
    assert record["not_tried"] == ["0.7", "0.9"] and record["stopped"] == "time budget spent"
    assert record["time_budget_s"] == 0.001 and metrics["prune_points_tried"] == 1
    assert not (out / "pruned_70").exists() and not (out / "pruned_90").exists()


def test_only_layers_with_prunable_kernels_are_wrapped(tiny_budget):
    """tfmot's default wraps every layer and refuses Rescaling/Normalization; the stage prunes the kernels only."""
    out, _ = tiny_budget
    meta = variant.read(out / "pruned_50")
    assert sorted(meta.extra["sparsity"]["layers"]) == ["conv", "head"]
    assert all(s == pytest.approx(0.5, abs=0.01) for s in meta.extra["sparsity"]["layers"].values())
    from kfopt.frameworks import keras as keras_adapter

    kinds = [type(layer).__name__ for layer in keras_adapter.load(out / "pruned_50").layers]
    assert {"Rescaling", "Normalization", "BatchNormalization"} <= set(kinds)  # left in place, unwrapped
    assert variant.read(out / "pruned_50_tflite_int8").precision == "int8"
    x, y = ds_mod.read(out.parent / "dataset").split("test")
    probs = bench.predict_all(formats.load(out / "pruned_50"), x)
    assert verify.quality(probs, y, "multiclass")["accuracy"] > 0.3  # it still learns from raw pixels (chance 0.1)


def _search(root, sparsities, work, accuracy_budget, min_agreement, budget_s=600.0):
    """The stage's search with its real pruner, without the CHAIN after it (what these tests look at)."""
    from kfopt import frameworks, passes

    parent = variant.read(root / "baseline")
    ds = ds_mod.read(root / "dataset")
    ctx = passes.Context.for_stage(ds, root / "baseline", 16, accuracy_budget, min_agreement, work / "ctx")
    found = search.Search("sparsity", "size_gzip_bytes", prune.SEARCH_RULE, budget_s)
    make = prune._point(frameworks.of(parent), root / "baseline", parent, ds, ctx, epochs=2)
    (work / "out").mkdir()
    return prune_search.run(sparsities, found, make, prune.checks.pruned_name, work / "points", work / "out")


def test_when_no_sparsity_passes_the_safest_is_kept_with_its_failed_check(preprocessing_model, tmp_path):
    meta = _search(preprocessing_model, [0.99, 0.95], tmp_path, accuracy_budget=0.0, min_agreement=1.0)
    assert meta.name == "pruned_95" and not meta.extra["in_stage_check"]["passed"]
    record = meta.extra[search.KEY]
    assert [p["setting"] for p in record["points"]] == ["0.95"]  # failing the safest rules out the rest
    assert record["chosen"] == "0.95" and record["kept_because"] == prune_search.NONE_PASSED
    assert not record["points"][0]["passed"] and record["points"][0]["reason"] != "within budget"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pruned_95"] and not (tmp_path / "points").exists()


def test_a_point_whose_estimate_is_beyond_the_budget_left_does_not_pass_the_search():
    """The check lets a loss through when the interval straddles the budget; the search's most-aggressive rule
    would pick exactly such points, so it also asks for the estimate within the budget left."""
    check = {"passed": True, "reason": "too few rows to tell", "accuracy_delta_pp": -1.5, "budget_left_pp": 0.5}
    passed, reason = prune_search.verdict(check)
    assert not passed and "-1.50 pp is beyond the 0.5 pp budget left" in reason
    assert prune_search.verdict({**check, "accuracy_delta_pp": -0.4}) == (True, "too few rows to tell")
    assert prune_search.verdict({**check, "passed": False, "reason": "agreement"}) == (False, "agreement")


def test_a_residual_net_kfopt_did_not_build_goes_through_the_search(preprocessing_model, tmp_path):
    """A torchvision-style block written here in tf-keras (conv-BN-ReLU, a depthwise convolution, a 1x1
    projection added back to its input), brought as a file. A MobileNetV2 (tf_keras.applications) takes
    the stage in tests/test_existing_model.py; two points of it here would cost minutes."""
    from kfopt.models import train
    from kfopt.tfenv import keras

    k = keras()
    data = preprocessing_model / "dataset"
    k.utils.set_random_seed(0)
    x = k.layers.Input((8, 8, 1), name="input")
    h = k.layers.ReLU()(k.layers.BatchNormalization()(k.layers.Conv2D(16, 3, padding="same", name="stem")(
        k.layers.Rescaling(1 / 16)(x))))
    r = k.layers.ReLU()(k.layers.BatchNormalization()(k.layers.DepthwiseConv2D(3, padding="same")(h)))
    h = k.layers.Add()([h, k.layers.Conv2D(16, 1, name="project")(r)])
    model = k.Model(x, k.layers.Dense(10, activation="softmax", name="head")(k.layers.GlobalAveragePooling2D()(h)))
    model.compile(k.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(*ds_mod.read(data).split("train"), epochs=4, batch_size=32, verbose=0)
    model.save(tmp_path / "resnet.keras")
    (tmp_path / "dataset").symlink_to(data)
    train.run(data, tmp_path / "baseline", model_uri=str(tmp_path / "resnet.keras"))
    meta = _search(tmp_path, [0.8, 0.5], tmp_path, accuracy_budget=100.0, min_agreement=0.0)
    record = meta.extra[search.KEY]
    assert [p["setting"] for p in record["points"]] == ["0.5", "0.8"] and meta.name == "pruned_80"
    assert {"stem", "project", "head"} <= set(meta.extra["sparsity"]["layers"])
    assert meta.extra["sparsity"]["overall"] == pytest.approx(0.8, abs=0.01)
    assert record["points"][1]["size_gzip_bytes"] < record["points"][0]["size_gzip_bytes"]
    probs = bench.predict_all(formats.load(tmp_path / "out" / "pruned_80"), ds_mod.read(data).split("test")[0])
    assert probs.shape[1] == 10


def test_a_model_with_nothing_to_prune_is_a_model_error(preprocessing_model, tmp_path):
    from kfopt.errors import ModelError
    from kfopt.tfenv import keras

    k = keras()
    x = k.layers.Input((8, 8, 1), name="input")
    model = k.Model(x, k.layers.Softmax()(k.layers.Flatten()(k.layers.Rescaling(1 / 16)(x))[:, :10]))
    data = ds_mod.read(preprocessing_model / "dataset")
    with pytest.raises(ModelError, match="no layer whose weights tfmot can prune"):
        prune.prune_model(model, data, 0.5, 2)
