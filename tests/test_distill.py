"""The distill stage: a half-width student learns from the trained baseline, then int8."""

import numpy as np
import pytest

from kfopt import bench, formats, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.frameworks import keras as keras_adapter
from kfopt.optimize import distill


def test_student_is_smaller_learns_and_enters_the_int8_chain(digits_small, tmp_path):
    out = tmp_path / "d"
    metrics = distill.run(digits_small["baseline"], digits_small["dataset"], out, student_width=0.5, epochs=8,
                          temperature=4.0, alpha=0.1, calibration_samples=64)
    student, int8 = variant.read(out / "student"), variant.read(out / "student_tflite_int8")
    assert student.technique == "distill" and student.parent == "baseline"
    assert student.params["temperature"] == 4.0 and student.params["alpha"] == 0.1
    assert int8.parent == "student" and int8.input.dtype == "int8" and "fallback" in int8.extra
    # half the filters/units: about a quarter of the parameters
    assert metrics["student_parameters"] < 0.35 * metrics["teacher_parameters"]
    onnx_int8 = variant.read(out / "student_onnx_int8")  # the declared CHAIN: student → ONNX → ORT int8
    assert onnx_int8.parent == "student_onnx_fp32" and variant.read(out / "student_onnx_fp32").parent == "student"
    assert metrics["variants"] == 4 == len(variant.discover(out))
    x, y = ds_mod.read(digits_small["dataset"]).split("test")
    for name in ("student", "student_tflite_int8", "student_onnx_fp32", "student_onnx_int8"):
        assert verify.quality(bench.predict_all(formats.load(out / name), x), y, "multiclass")["accuracy"] > 0.85


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
