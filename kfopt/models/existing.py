"""Optimize a model the user already trained: load it safely, check it against the data, write the baseline.

Accepted: a Keras SavedModel folder (with keras_metadata.pb) or a `.keras` file, from a local path or
gs://. Loading never runs code from the file: `.keras` loads with safe_mode=True, a SavedModel loads
inside Keras' safe-mode scope (which refuses Python lambdas stored as bytecode), and other formats
(.h5, pickles) are refused. The model's input spec (shape, dtype, preprocessing layers) and output
width are checked against the Dataset artifact, with one clear error per mismatch. The model sees the
data as given (normalize=auto resolves to none for it) and an implausible baseline accuracy is said
out loud: the contract of kfopt.models.brought, which later torch/ONNX loaders follow too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kfopt import storage, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.models import brought

PREPROCESSING_LAYERS = ("Rescaling", "Normalization", "Resizing", "CenterCrop")


def load(path: Path):
    """The tf-keras model at `path` (a .keras file or a Keras SavedModel folder), loaded safely."""
    from kfopt.tfenv import keras

    path = Path(path)
    k = keras()
    if path.is_file() and path.suffix == ".keras":
        loader = lambda: k.models.load_model(str(path), compile=False, safe_mode=True)  # noqa: E731
    elif path.is_dir() and (path / "saved_model.pb").is_file():
        if not (path / "keras_metadata.pb").is_file():
            raise ModelError(f"{path} is a TensorFlow SavedModel but not a Keras one (no keras_metadata.pb); kfopt "
                             "needs the Keras model to prune and distill: save it with tf_keras model.save(path).")
        from tf_keras.src.saving.serialization_lib import SafeModeScope

        def loader():
            with SafeModeScope(True):
                return k.models.load_model(str(path), compile=False)
    else:
        raise ModelError(f"{path} is neither a .keras file nor a Keras SavedModel folder; kfopt loads only those "
                         "two formats (no .h5 or pickles, which can carry code). Save the model with "
                         "model.save('model.keras') or as a SavedModel folder.")
    try:
        return loader()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a model it cannot rebuild
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"Cannot load the Keras model at {path}: {first[:300]}") from None


def _layers(model) -> list:
    return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]


def check_against(model, schema: ds_mod.Schema) -> dict[str, Any]:
    """Check input shape/dtype, preprocessing and output width against the data; returns the input spec."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"The model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; kfopt "
                         "optimizes single-input, single-output classifiers.")
    shape = list(model.inputs[0].shape[1:])
    want = list(schema.feature_shape)
    if len(shape) != len(want) or any(s is not None and s != w for s, w in zip(shape, want)):
        raise ModelError(f"The model expects input of shape {tuple(shape)} but the dataset's features have shape "
                         f"{tuple(want)}; give data shaped like the model's input (or the model for this data).")
    dtype = model.inputs[0].dtype.name
    if not dtype.startswith(("float", "bfloat")):
        raise ModelError(f"The model's input dtype is {dtype}; kfopt feeds float32 features, so the model must "
                         "take a float input.")
    preprocessing = [type(layer).__name__ for layer in _layers(model)[:3]
                     if type(layer).__name__ in PREPROCESSING_LAYERS]
    brought.check_preprocessing(preprocessing, schema)
    units = int(model.outputs[0].shape[-1])
    expected = 1 if schema.task == "binary" else schema.num_classes
    if units != expected:
        what = "1 sigmoid unit for a binary task" if schema.task == "binary" else f"{expected} units, one per class"
        raise ModelError(f"The model has {units} output units but the data has {schema.num_classes} classes "
                         f"(expected {what}); give a model trained for these classes.")
    return {"shape": [None, *want], "dtype": dtype, "preprocessing": preprocessing,
            "data_normalization": schema.normalization.get("method", "none")}


def _output_activation(model) -> str:
    return str(_layers(model)[-1].get_config().get("activation", "linear"))


def as_classifier(model, schema: ds_mod.Schema):
    """Fix a dynamic input shape to the data's and end in softmax/sigmoid, so runners return probabilities.

    The model is rebuilt from its config (same layers, same weights), never wrapped: tfmot cannot prune
    or quantize a model nested inside another.
    """
    from kfopt.tfenv import keras

    k = keras()
    appended = None
    if any(s is None for s in model.inputs[0].shape[1:]):
        config = model.get_config()
        for layer in config["layers"]:
            if "batch_input_shape" in layer["config"]:
                layer["config"]["batch_input_shape"] = [None, *schema.feature_shape]
        rebuilt = type(model).from_config(config) if isinstance(model, k.Sequential) else k.Model.from_config(config)
        rebuilt.set_weights(model.get_weights())
        model = rebuilt
    if _output_activation(model) in ("linear", "None"):
        appended = "sigmoid" if schema.task == "binary" else "softmax"
        outputs = k.layers.Activation(appended, name="probabilities")(model.outputs[0])
        model = k.Model(model.inputs, outputs, name=model.name)
    return model, appended


def run(dataset_dir: Path, out_dir: Path, *, model_uri: str) -> dict[str, Any]:
    """Write the user's model as the baseline variant, like train.run does for a trained one."""
    from kfopt.formats import savedmodel
    from kfopt.models.train import input_output_specs
    from kfopt.optimize.gate import probabilities

    ds = ds_mod.read(dataset_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model = load(storage.fetch(model_uri, Path(tmp), require_complete=False))
    spec = check_against(model, ds.schema)
    model, appended = as_classifier(model, ds.schema)
    x, y = ds.split("test")
    probs = probabilities(model, x)
    test_acc = verify.quality(probs, y, ds.schema.task)["accuracy"]
    implausible = brought.implausible(test_acc, ds.schema)
    if implausible:
        brought.warn("train", implausible["message"])
    in_spec, out_spec = input_output_specs(ds.schema)
    meta = variant.VariantMeta(
        name="baseline", format="savedmodel", precision="fp32", target="cpu", input=in_spec, output=out_spec,
        task=ds.schema.task, framework="keras", runtime="tensorflow", technique="provided",
        params={"model_uri": model_uri, "architecture": model.name},
        extra={"parameters": int(model.count_params()), "test_accuracy": test_acc, "input_check": spec,
               "appended_output_activation": appended, "implausible_baseline": implausible})
    with variant.staged_dir(Path(out_dir)) as tmp_out:
        savedmodel.save(model, tmp_out)
        variant.write(tmp_out, meta)
    return {"test_accuracy": test_acc, "parameters": int(model.count_params()), "epochs": 0,
            "provided": 1, "implausible_baseline": implausible is not None, "history": {}}
