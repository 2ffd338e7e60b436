"""Optimize a model the user already has: safe loading, checks against the data, every technique.

The architecture kfopt did not build is tf_keras.applications.MobileNetV2 (weights=None, 32x32x3,
alpha 0.35), trained for a moment on a small synthetic image set made here. It goes through every
technique; its accuracy is not the point (a few steps of training), its variants running, carrying
verification figures and the techniques' own guarantees (int8 I/O, sparsity, a smaller student) are.
"""

import numpy as np
import pytest

from kfopt import bench, formats, storage, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.data import preprocess
from kfopt.errors import ModelError
from kfopt.models import existing, train
from kfopt.optimize import distill, prune, quantize


def _keras():
    from kfopt.tfenv import keras

    return keras()


def _synthetic_images(path, n=120, classes=3, seed=0):
    """Noise with a bright patch in a class-specific corner: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 32, 32, 3)).astype(np.float32)
    y = np.arange(n) % classes
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, 16 * r:16 * r + 16, 16 * q:16 * q + 16, c] += 2.0
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    k = _keras()
    root = tmp_path_factory.mktemp("mobilenet")
    preprocess.run(str(_synthetic_images(root / "images.npz")), root / "dataset", seed=0)
    ds = ds_mod.read(root / "dataset")
    k.utils.set_random_seed(0)
    model = k.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3)
    model.compile(k.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(*ds.split("train"), epochs=2, batch_size=16, verbose=0)
    model.save(root / "mobilenet.keras")
    metrics = train.run(root / "dataset", root / "baseline", model_uri=str(root / "mobilenet.keras"))
    return {"root": root, "dataset": root / "dataset", "baseline": root / "baseline", "metrics": metrics}


def test_provided_model_becomes_the_baseline(mobilenet):
    meta = variant.read(mobilenet["baseline"])
    assert meta.name == "baseline" and meta.technique == "provided" and meta.format == "savedmodel"
    assert meta.params["model_uri"].endswith("mobilenet.keras")
    assert meta.extra["input_check"]["shape"] == [None, 32, 32, 3]
    assert meta.input.shape == [None, 32, 32, 3] and meta.output.shape == [None, 3]
    assert mobilenet["metrics"]["history"] == {} and mobilenet["metrics"]["epochs"] == 0
    x = ds_mod.read(mobilenet["dataset"]).split("test")[0]
    probs = formats.load(mobilenet["baseline"]).predict(x[:5])
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-4)


@pytest.mark.slow
def test_mobilenet_goes_through_every_technique(mobilenet):
    root, data, base = mobilenet["root"], mobilenet["dataset"], mobilenet["baseline"]
    common = {"calibration_samples": 16, "accuracy_budget": 100.0, "min_agreement": 0.0,
              "ort_search": ()}  # one ORT int8 form: the search itself is tested on a MobileNetV2 in test_ort_search
    quantize.run(base, data, root / "quantized", qat_epochs=1, **common)
    prune.run(base, data, root / "pruned", sparsities=[0.5], epochs=2, **common)
    distill.run(base, data, root / "distilled", epochs=1, student_width=[0.75, 0.5], **common)
    x, y = ds_mod.read(data).split("test")
    base_probs = bench.predict_all(formats.load(base), x)
    names = set()
    for folder in ("quantized", "pruned", "distilled"):
        for vdir in variant.discover(root / folder):
            meta = variant.read(vdir)
            assert meta.status == "ok", (meta.name, meta.reason)
            probs = bench.predict_all(formats.load(vdir), x)
            check = verify.compare(probs, base_probs, y, "multiclass", 100.0, 0.0)
            assert probs.shape == (len(x), 3) and np.isfinite(check["max_abs_error"]), meta.name
            names.add(meta.name)
    assert names == {"tflite_dynamic", "tflite_fp16", "tflite_int8", "onnx_int8", "onnx_int8_trt", "tflite_qat_int8",
                     "pruned_50", "pruned_50_tflite_int8", "pruned_50_onnx_fp32", "pruned_50_onnx_int8",
                     "student", "student_tflite_int8", "student_onnx_fp32", "student_onnx_int8"}
    assert variant.read(root / "quantized" / "tflite_int8").input.dtype == "int8"
    assert variant.read(root / "pruned" / "pruned_50").extra["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    student = variant.read(root / "distilled" / "student")
    assert student.extra["parameters"] < student.extra["teacher_parameters"]
    searched = student.extra["search"]  # the width search ran on it, widest first; the narrowest passing is kept
    assert searched["points"][0]["setting"] == "0.75" and len(searched["points"]) >= 2
    assert student.params["student_width"] == min(p["width"] for p in searched["points"] if p["passed"])


# --- loading and checks ------------------------------------------------------------------------------------


def _save_sequential(path, *layers, input_shape=(8, 8, 1)):
    k = _keras()
    model = k.Sequential([k.layers.Input(shape=input_shape), *layers])
    model.save(str(path))
    return path


def test_shape_mismatch_is_a_clear_error(digits_small, cancer_small, tmp_path):
    with pytest.raises(ModelError, match=r"expects input of shape \(8, 8, 1\).*\(30,\)"):
        existing.run(cancer_small["dataset"], tmp_path / "b", model_uri=str(digits_small["baseline"] / "saved_model"))
    assert not (tmp_path / "b").exists()


def test_output_width_mismatch_is_a_clear_error(digits_small, tmp_path):
    k = _keras()
    path = _save_sequential(tmp_path / "m.keras", k.layers.Flatten(), k.layers.Dense(5, activation="softmax"))
    with pytest.raises(ModelError, match="5 output units but the data has 10 classes"):
        existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(path))


def test_model_that_normalizes_its_own_input_needs_raw_data(digits_small, tmp_path):
    k = _keras()
    path = _save_sequential(tmp_path / "m.keras", k.layers.Rescaling(1 / 16), k.layers.Flatten(),
                            k.layers.Dense(10, activation="softmax"))
    with pytest.raises(ModelError, match="Rescaling.*normalize=none"):
        existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(path))


@pytest.mark.parametrize("fmt", ["keras", "savedmodel"])
def test_lambda_layers_are_never_deserialized(digits_small, tmp_path, fmt, monkeypatch):
    """A Lambda's Python code never runs at load: .keras refuses it (safe_mode); a SavedModel may revive
    the layer from its traced TF graph instead, which runs no Python. The lambda leaves a marker file."""
    k = _keras()
    marker = tmp_path / "lambda-ran"
    monkeypatch.setenv("KFOPT_LAMBDA_MARKER", str(marker))
    touch = lambda t: t * float(open(__import__("os").getenv("KFOPT_LAMBDA_MARKER"), "a").close() is None)  # noqa

    path = _save_sequential(tmp_path / ("m.keras" if fmt == "keras" else "m"), k.layers.Lambda(touch),
                            k.layers.Flatten(), k.layers.Dense(10, activation="softmax"))
    marker.unlink(missing_ok=True)  # saving traced the lambda once
    if fmt == "keras":
        with pytest.raises(ModelError, match="Cannot load.*(Lambda|lambda)"):
            existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(path))
    else:
        try:
            existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(path))
        except ModelError:
            pass
    assert not marker.exists()


def test_other_formats_are_refused(digits_small, tmp_path):
    from kfopt.tfenv import tf

    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n")
    with pytest.raises(ModelError, match=r"not a model kfopt can load.*\.h5\) are refused"):
        existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(tmp_path / "m.h5"))
    module = tf().Module()
    module.v = tf().Variable(1.0)
    tf().saved_model.save(module, str(tmp_path / "plain"))
    with pytest.raises(ModelError, match="not a Keras one"):
        existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(tmp_path / "plain"))


def test_logits_model_gets_a_softmax(digits_small, tmp_path):
    k = _keras()
    path = _save_sequential(tmp_path / "m.keras", k.layers.Flatten(), k.layers.Dense(10))
    existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(path))
    meta = variant.read(tmp_path / "b")
    assert meta.extra["appended_output_activation"] == "softmax"
    probs = formats.load(tmp_path / "b").predict(ds_mod.read(digits_small["dataset"]).split("test")[0][:4])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_savedmodel_folder_from_gcs_without_a_marker(digits_small, gcs, tmp_path):
    source = digits_small["baseline"] / "saved_model"
    for file in sorted(p for p in source.rglob("*") if p.is_file()):  # as `gsutil cp -r` leaves it
        storage.write_bytes(gcs.uri(f"models/digits/{file.relative_to(source).as_posix()}"), file.read_bytes())
    metrics = existing.run(digits_small["dataset"], tmp_path / "b", model_uri=gcs.uri("models/digits"))
    original = variant.read(digits_small["baseline"]).extra["test_accuracy"]
    assert metrics["test_accuracy"] == pytest.approx(original, abs=1e-6)
    assert variant.read(tmp_path / "b").params["model_uri"] == gcs.uri("models/digits")


def test_dynamic_spatial_input_is_fixed_to_the_data(digits_small, tmp_path):
    k = _keras()
    path = _save_sequential(tmp_path / "m.keras", k.layers.Conv2D(4, 3), k.layers.GlobalAveragePooling2D(),
                            k.layers.Dense(10, activation="softmax"), input_shape=(None, None, 1))
    existing.run(digits_small["dataset"], tmp_path / "b", model_uri=str(path))
    from kfopt.frameworks import keras as keras_adapter

    assert list(keras_adapter.load(tmp_path / "b").inputs[0].shape[1:]) == [8, 8, 1]
