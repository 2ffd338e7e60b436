"""The distill stage: a student searched over width learns from the trained baseline, then int8.

Every student is really trained (tf-keras) against the real teacher's outputs; the search, the in-stage
check and the chain run as in the pipeline. Small widths, epochs and data keep each test to seconds.
"""

import numpy as np
import pytest

from kfopt import bench, config, formats, passes, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError, ModelError
from kfopt.frameworks import keras as keras_adapter
from kfopt.optimize import distill, recipe
from kfopt.passes.check import InStageCheck

PASS_ALL = {"accuracy_budget": 100.0, "min_agreement": 0.0}  # every student passes: the search order shows


def test_student_is_smaller_learns_and_enters_the_int8_chain(digits_small, tmp_path):
    out = tmp_path / "d"
    metrics = distill.run(digits_small["baseline"], digits_small["dataset"], out, student_width=0.5, epochs=8,
                          temperature=4.0, alpha=0.1, calibration_samples=64)
    student, int8 = variant.read(out / "student"), variant.read(out / "student_tflite_int8")
    assert student.technique == "distill" and student.parent == "baseline"
    assert student.params["temperature"] == 4.0 and student.params["alpha"] == 0.1
    assert student.params["student_width"] == 0.5 and student.params["searched_widths"] == [0.5]
    assert int8.parent == "student" and int8.input.dtype == "int8" and "fallback" in int8.extra
    # half the filters/units: about a quarter of the parameters
    assert metrics["student_parameters"] < 0.35 * metrics["teacher_parameters"]
    onnx_int8 = variant.read(out / "student_onnx_int8")  # the declared CHAIN: student → ONNX → ORT int8
    assert onnx_int8.parent == "student_onnx_fp32" and variant.read(out / "student_onnx_fp32").parent == "student"
    assert metrics["variants"] == 4 == len(variant.discover(out))
    x, y = ds_mod.read(digits_small["dataset"]).split("test")
    for name in ("student", "student_tflite_int8", "student_onnx_fp32", "student_onnx_int8"):
        assert verify.quality(bench.predict_all(formats.load(out / name), x), y, "multiclass")["accuracy"] > 0.85
    # early stopping kept the best epoch's weights, within the most epochs allowed
    run = student.extra["recipe"]
    history = student.extra["history"]
    assert run["epochs_run"] == len(history["val_accuracy"]) == len(history["learning_rate"]) <= 8
    assert run["best_val_loss"] == min(history["val_loss"]) == history["val_loss"][run["best_epoch"] - 1]
    assert run["stopped_early"] == (run["epochs_run"] < 8)
    if run["stopped_early"]:  # then `patience` epochs without a lower loss followed the best
        assert run["epochs_run"] - run["best_epoch"] == distill.PATIENCE
    (point,) = student.extra["search"]["points"]
    assert point["setting"] == "0.5" and point["epochs_run"] == run["epochs_run"]


def test_width_search_keeps_the_narrowest_passing_student_and_asks_the_teacher_once(digits_small, tmp_path,
                                                                                     monkeypatch):
    calls = []
    real = distill.soft_targets
    monkeypatch.setattr(distill, "soft_targets", lambda teacher, x: calls.append(len(x)) or real(teacher, x))
    out = tmp_path / "d"
    metrics = distill.run(digits_small["baseline"], digits_small["dataset"], out, student_width=[0.25, 0.75, 0.5],
                          epochs=2, calibration_samples=32, **PASS_ALL)
    assert calls == [len(ds_mod.read(digits_small["dataset"]).split("train")[0])]  # once, for three widths' worth
    student = variant.read(out / "student")
    record = student.extra["search"]
    # bisection from the widest: 0.75 passed, so the narrowest (0.25) next; it passed too, so 0.5 needs no training
    assert [p["setting"] for p in record["points"]] == ["0.75", "0.25"]
    assert record["chosen"] == record["kept"] == "0.25" and record["knob"] == "student_width"
    assert record["objective"] == "parameters" and record["not_tried"] == []
    wide, narrow = record["points"]
    assert wide["parameters"] > narrow["parameters"] == student.extra["parameters"] == metrics["student_parameters"]
    for point in record["points"]:
        assert point["passed"] and point["seconds"] > 0 and 1 <= point["epochs_run"] <= 2
    assert student.params["student_width"] == 0.25 == metrics["student_width"]
    assert student.params["searched_widths"] == [0.75, 0.5, 0.25]
    # only the kept student has a variant (and its chain)
    assert sorted(m.name for m in map(variant.read, variant.discover(out))) == [
        "student", "student_onnx_fp32", "student_onnx_int8", "student_tflite_int8"]


def _context(ds, teacher, tmp_path, budget_s=60.0, accuracy_budget=100.0, min_agreement=0.0):
    """The stage's context against an in-memory teacher (what for_stage builds from a saved baseline)."""
    x, y = ds.split("val")
    check = InStageCheck(x, y, keras_adapter.predict(teacher, x), ds.schema.task, accuracy_budget, min_agreement)
    return passes.Context(ds, ds.split("train")[0][:16], check, tmp_path, search_budget_s=budget_s)


def _search(teacher, ds, ctx, widths, epochs=1):
    return distill.searched_student(teacher, ds, ctx, widths, temperature=4.0, alpha=0.1, epochs=epochs,
                                    patience=5, seed=1)


def test_a_tiny_time_budget_stops_after_the_first_point(digits_small, tmp_path):
    teacher, ds = keras_adapter.load(digits_small["baseline"]), ds_mod.read(digits_small["dataset"])
    width, kept, record = _search(teacher, ds, _context(ds, teacher, tmp_path, budget_s=1e-3), (0.75, 0.5, 0.25))
    assert [p["setting"] for p in record["points"]] == ["0.75"] and width == 0.75
    assert record["not_tried"] == ["0.5", "0.25"] and record["stopped"] == "time budget spent"
    assert kept.parameters == kept.model.count_params()


def test_when_no_width_passes_the_widest_is_kept_with_its_failed_check(digits_small, tmp_path):
    teacher, ds = keras_adapter.load(digits_small["baseline"]), ds_mod.read(digits_small["dataset"])
    ctx = _context(ds, teacher, tmp_path, accuracy_budget=0.0, min_agreement=1.0)  # one epoch cannot match it
    width, kept, record = _search(teacher, ds, ctx, (0.25, 0.125))
    # the widest failed, so no narrower one is worth training
    assert [(p["setting"], p["passed"]) for p in record["points"]] == [("0.25", False)]
    assert width == 0.25 and record["chosen"] is None and record["kept"] == "0.25"
    assert "no width passed" in record["kept_failing"] and record["points"][0]["reason"]


def test_a_loss_the_check_cannot_tell_from_noise_does_not_pass_the_search(digits_small):
    """The in-stage check lets a 1-row loss on 75 rows through (too few rows to tell); keeping the narrowest
    such student would pick the loss the noise hides, so the search asks the estimate to be within the budget."""
    from kfopt.optimize import student_search

    _, y = ds_mod.read(digits_small["dataset"]).split("val")
    perfect = np.eye(10, dtype=np.float32)[y]
    check = InStageCheck(np.zeros((len(y), 1), np.float32), y, perfect, "multiclass", 0.5, 0.97)
    one_wrong = perfect.copy()
    one_wrong[0] = np.roll(one_wrong[0], 1)
    result = check.compare(one_wrong)
    assert result["passed"] and result["accuracy_delta_pp"] < -0.5  # the check: not confidently beyond 0.5 pp
    passed, reason = student_search._verdict(result, check.budget_left_pp)
    assert not passed and "beyond the 0.5 pp budget left" in reason
    assert student_search._verdict(check.compare(perfect), check.budget_left_pp)[0]


def test_the_same_seed_trains_the_same_student(digits_small):
    teacher, ds = keras_adapter.load(digits_small["baseline"]), ds_mod.read(digits_small["dataset"])
    probs = distill.soft_targets(teacher, ds.split("train")[0])
    runs = [distill.distill_model(teacher, ds, width=0.25, temperature=4.0, alpha=0.1, epochs=2, seed=5,
                                  teacher_probs=probs) for _ in range(2)]
    (a, history_a), (b, history_b) = runs
    assert history_a == history_b
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_plateau_halves_the_rate_then_stops_and_names_the_best_epoch():
    plateau = recipe.Plateau(1e-3, patience=4)
    rates, improved = [], []
    history = {"val_accuracy": [0.5, 0.7, 0.7, 0.7, 0.6, 0.7, 0.65, 0.9], "val_loss": [1, .5, .4, .4, .6, .5, .5, .1]}
    for epoch in range(len(history["val_accuracy"])):
        improved.append(plateau.update(recipe.score(history, "val_accuracy", epoch)))
        rates.append(plateau.learning_rate)
        if plateau.stop:
            break
    # the same accuracy at a lower loss is a gain, at the same loss it is not; stopped before the 0.9
    assert improved == [True, True, True, False, False, False, False]
    assert rates == [1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4] and plateau.best_epoch == 3
    fixed = recipe.Plateau(1e-3, patience=None)  # the old recipe: every epoch, one rate
    assert [fixed.update((s,)) for s in (0.5, 0.4, 0.3)] == [True, False, False]
    assert not fixed.stop and fixed.learning_rate == 1e-3
    summary = recipe.summary({**history, "learning_rate": [1e-3] * 7 + [5e-4]}, "val_accuracy", 9)
    assert summary["best_epoch"] == 8 and summary["stopped_early"] and summary["final_learning_rate"] == 5e-4
    assert recipe.summary({k: v[:4] for k, v in history.items()}, "val_accuracy", 4)["best_epoch"] == 3


def test_an_old_single_width_reads_as_a_one_point_search():
    assert config.from_dict({"distill": {"student_width": 0.5}}).distill.student_width == [0.5]
    assert config.from_dict({"distill": {"student_width": [0.5, 0.25]}}).distill.student_width == [0.5, 0.25]
    assert config.RunConfig().distill.student_width == list(distill.WIDTHS)


@pytest.mark.parametrize("widths, message", [
    ([], "student_width is empty"),
    ([0.5, 0.5], "names a width twice"),
    ([0.5, 1.2], "larger than the teacher"),
    ([0.0, 0.5], r"must be in \(0, 1\)"),
    (["wide"], "must be float"),
])
def test_bad_widths_are_refused_with_a_clear_message(digits_small, tmp_path, widths, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict({"distill": {"student_width": widths}})
    if all(isinstance(w, float) for w in widths):
        with pytest.raises(ConfigError, match=message):
            distill.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "d", student_width=widths)
        assert not (tmp_path / "d").exists()


def test_binary_student(cancer_small, tmp_path):
    out = tmp_path / "d"
    metrics = distill.run(cancer_small["baseline"], cancer_small["dataset"], out, epochs=5, calibration_samples=32)
    x, y = ds_mod.read(cancer_small["dataset"]).split("test")
    probs = bench.predict_all(formats.load(out / "student"), x)
    assert probs.shape == (len(x), 1)
    assert verify.quality(probs, y, "binary")["accuracy"] > 0.85
    assert metrics["student_parameters"] < metrics["teacher_parameters"]


def test_student_layers_are_scaled_and_the_output_kept(digits_small):
    teacher = keras_adapter.load(digits_small["baseline"])
    student = distill.student_like(teacher, 0.25)
    widths = [(t.get_config().get("filters") or t.get_config().get("units"),
               s.get_config().get("filters") or s.get_config().get("units")) for t, s in zip(teacher.layers,
                                                                                           student.layers)]
    scaled = [(t, s) for t, s in widths if t]
    assert scaled[:-1] == [(t, round(t * 0.25)) for t, _ in scaled[:-1]]
    assert scaled[-1] == (10, 10)


def _keras():
    from kfopt.tfenv import keras

    return keras()


def _tied_block_model():
    """The shapes that broke per-layer scaling: a residual Add onto the input, a squeeze-excite Multiply whose
    Reshape target holds the channel count (as in EfficientNet), and a softmax Activation after the head."""
    k = _keras()
    x = k.layers.Input((8, 8, 4), name="input")
    residual = k.layers.Add()([x, k.layers.Conv2D(4, 1, name="to_input")(x)])
    h = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv")(residual)
    se = k.layers.GlobalAveragePooling2D()(h)
    se = k.layers.Reshape((1, 1, 32))(se)
    se = k.layers.Conv2D(8, 1, activation="relu", name="se_reduce")(se)
    se = k.layers.Conv2D(32, 1, activation="sigmoid", name="se_expand")(se)
    h = k.layers.Multiply()([h, se])
    h = k.layers.Dense(16, activation="relu", name="hidden")(k.layers.GlobalAveragePooling2D()(h))
    return k.Model(x, k.layers.Activation("softmax")(k.layers.Dense(5, name="head")(h)))


def test_tied_channel_counts_scale_together():
    teacher = _tied_block_model()
    student = distill.student_like(teacher, 0.5)
    width = {layer.name: layer.get_config().get("filters") or layer.get_config().get("units")
             for layer in student.layers if isinstance(layer, (_keras().layers.Conv2D, _keras().layers.Dense))}
    # the conv added onto the input keeps its 4, the head (before its softmax Activation) its 5 classes
    assert width == {"to_input": 4, "conv": 16, "se_reduce": 4, "se_expand": 16, "hidden": 8, "head": 5}
    reshape = next(layer for layer in student.layers if isinstance(layer, _keras().layers.Reshape))
    assert tuple(reshape.get_config()["target_shape"]) == (1, 1, 16)
    assert student(np.zeros((2, 8, 8, 4), np.float32)).shape == (2, 5)
    assert student.count_params() < 0.4 * teacher.count_params()
    # the student starts from the teacher's leading channels, consistently across the tied layers
    assert distill.inherit_weights(student, teacher) == 6
    kernel = {layer.name: layer.get_weights()[0] for layer in student.layers if layer.get_weights()}
    given = {layer.name: layer.get_weights()[0] for layer in teacher.layers if layer.get_weights()}
    np.testing.assert_array_equal(kernel["conv"], given["conv"][:, :, :, :16])
    np.testing.assert_array_equal(kernel["se_expand"], given["se_expand"][:, :, :4, :16])
    np.testing.assert_array_equal(kernel["head"], given["head"][:8, :])


def test_student_of_an_efficientnet():
    """tf_keras.applications.EfficientNetB0: Rescaling/Normalization input layers and squeeze-excite Reshapes."""
    teacher = _keras().applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=3)
    student = distill.student_like(teacher, 0.5)
    assert student.count_params() < 0.3 * teacher.count_params()
    assert student(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 3)


def test_a_student_keras_cannot_build_is_a_model_error_with_its_reason():
    k = _keras()
    x = k.layers.Input((8, 8, 3), name="input")
    h = k.layers.Conv2D(6, 3, groups=3, name="grouped")(k.layers.Conv2D(3, 1)(x))  # 3 filters in 3 groups
    teacher = k.Model(x, k.layers.Dense(2, activation="softmax")(k.layers.Flatten()(h)))
    with pytest.raises(ModelError, match="Cannot derive a width-0.5 student.*divisible by the number of groups"):
        distill.student_like(teacher, 0.5)


def test_no_student_from_a_subclassed_model():
    k = _keras()

    class Tiny(k.Model):
        def __init__(self):
            super().__init__()
            self.head = k.layers.Dense(2, activation="softmax")

        def call(self, x):
            return self.head(x)

    assert "subclassed" in distill.subclassed(Tiny())
    assert distill.subclassed(_tied_block_model()) is None
    with pytest.raises(ModelError, match="subclassed"):
        distill.student_like(Tiny(), 0.5)
