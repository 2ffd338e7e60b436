"""The distill stage: a half-width student learns from the trained baseline, then int8."""

from kfopt import bench, formats, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.formats import savedmodel
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
    x, y = ds_mod.read(digits_small["dataset"]).split("test")
    for vdir in (out / "student", out / "student_tflite_int8"):
        assert verify.quality(bench.predict_all(formats.load(vdir), x), y, "multiclass")["accuracy"] > 0.85


def test_binary_student(cancer_small, tmp_path):
    out = tmp_path / "d"
    metrics = distill.run(cancer_small["baseline"], cancer_small["dataset"], out, epochs=5, calibration_samples=32)
    x, y = ds_mod.read(cancer_small["dataset"]).split("test")
    probs = bench.predict_all(formats.load(out / "student"), x)
    assert probs.shape == (len(x), 1)
    assert verify.quality(probs, y, "binary")["accuracy"] > 0.85
    assert metrics["student_parameters"] < metrics["teacher_parameters"]


def test_student_layers_are_scaled_and_the_output_kept(digits_small):
    teacher = savedmodel.load_keras(digits_small["baseline"])
    student = distill.student_like(teacher, 0.25)
    widths = [(t.get_config().get("filters") or t.get_config().get("units"),
               s.get_config().get("filters") or s.get_config().get("units")) for t, s in zip(teacher.layers,
                                                                                           student.layers)]
    scaled = [(t, s) for t, s in widths if t]
    assert scaled[:-1] == [(t, round(t * 0.25)) for t, _ in scaled[:-1]]
    assert scaled[-1] == (10, 10)
