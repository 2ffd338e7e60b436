"""The Keras adapter (tf-keras, TF_USE_LEGACY_KERAS=1): the one module that handles a Keras baseline.

Loading a user's model never runs code from the file: `.keras` loads with safe_mode=True, a
SavedModel loads inside Keras' safe-mode scope (which refuses Python lambdas stored as bytecode), and
other formats (.h5, pickles) are refused. A brought model is checked against the Dataset artifact
(input shape and dtype, preprocessing layers, output width) with one clear error per mismatch and
rebuilt to end in probabilities (kfopt.models.brought is the contract every loader follows).
Variants of a Keras model are SavedModels whose one serving signature the SavedModel runner
(kfopt.formats.savedmodel) executes; `load` gives the Keras object back to the techniques that need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.formats.savedmodel import DIRNAME
from kfopt.models import brought

NAME = "keras"
CAPABILITIES = frozenset({"fine_tune", "prune", "distill", "qat", "tflite"})
SUFFIXES = (".keras", "a Keras SavedModel folder")
FORMAT, RUNTIME = "savedmodel", "tensorflow"
PREPROCESSING_LAYERS = ("Rescaling", "Normalization", "Resizing", "CenterCrop")


def _keras():
    from kfopt.tfenv import keras

    return keras()


def accepts(path: Path) -> bool:
    """A .keras file, or a folder holding a TensorFlow SavedModel (load_user says if it is not a Keras one)."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".keras") or (path.is_dir() and (path / "saved_model.pb").is_file())


def _load_safely(path: Path):
    """The tf-keras model at `path` (a .keras file or a Keras SavedModel folder), loaded safely."""
    path = Path(path)
    k = _keras()
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
                         "two Keras formats (no .h5 or pickles, which can carry code). Save the model with "
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
    k = _keras()
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


def load_user(path: Path, schema: ds_mod.Schema) -> tuple[Any, dict[str, Any]]:
    """The user's model, loaded safely, checked against the data and ending in probabilities; and the notes
    (architecture, parameters, the input check, an appended output activation) for the baseline's kfopt.json."""
    model = _load_safely(path)
    spec = check_against(model, schema)
    model, appended = as_classifier(model, schema)
    return model, {"architecture": model.name, "parameters": int(model.count_params()), "input_check": spec,
                   "appended_output_activation": appended}


def save(model, variant_dir: Path) -> Path:
    """Save a tf-keras model as a SavedModel under variant_dir/saved_model.

    One serving signature (input "input", output "output", dynamic batch) is traced instead of every
    layer's call function (save_traces=False): Keras rebuilds the model from its config on load, so
    nothing is lost, and saving a MobileNetV2 takes ~2 s instead of ~8 s (loading ~1 s instead of ~3 s).
    """
    from kfopt.tfenv import tf

    t = tf()
    path = Path(variant_dir) / DIRNAME
    spec = t.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype, name="input")
    serving = t.function(lambda input: {"output": model(input, training=False)}).get_concrete_function(spec)
    model.save(str(path), save_format="tf", include_optimizer=False, save_traces=False,
               signatures={"serving_default": serving})
    return path


def load(variant_dir: Path):
    """The tf-keras model of a variant back, for the techniques that need the Keras object (tfmot, TFLite)."""
    return _keras().models.load_model(str(Path(variant_dir) / DIRNAME), compile=False)


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """A tf-keras model's outputs by direct calls (Keras predict() costs ~45 ms a call)."""
    return np.concatenate([np.asarray(model(x[i:i + batch], training=False), np.float32)
                           for i in range(0, len(x), batch)])


def compile_for(model, task: str, learning_rate: float) -> None:
    """Adam and the task's cross-entropy (the models end in softmax/sigmoid), with accuracy."""
    k = _keras()
    loss = "binary_crossentropy" if task == "binary" else "sparse_categorical_crossentropy"
    model.compile(optimizer=k.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])


def fine_tune(model, ds: ds_mod.Dataset, *, epochs: int, learning_rate: float, batch_size: int, seed: int,
              patience: int = 0, callbacks: list | None = None) -> dict[str, list[float]]:
    """Train `model` in place on the training split; return the curves.

    With `patience`, validation loss is watched and training stops early with the best weights restored
    (training a baseline); without, it runs all `epochs` (pruning, QAT: their schedules need every step).
    `callbacks` are Keras callbacks a Keras-only technique adds (tfmot's UpdatePruningStep).
    """
    k = _keras()
    k.utils.set_random_seed(seed)
    compile_for(model, ds.schema.task, learning_rate)
    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
    extra: dict[str, Any] = {}
    if patience:
        extra = {"validation_data": (xv, yv), "callbacks": [
            k.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)]}
    extra["callbacks"] = extra.get("callbacks", []) + list(callbacks or [])
    history = model.fit(xt, yt, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True, **extra)
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def export_onnx(model, input_spec: variant.TensorSpec, opset: int = 17):
    """tf2onnx conversion with a dynamic batch; returns the onnx.ModelProto."""
    import tf2onnx

    from kfopt.tfenv import tf

    signature = (tf().TensorSpec([None, *input_spec.shape[1:]], tf().float32, name=input_spec.name),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    return proto


def io_specs(schema: ds_mod.Schema) -> tuple[variant.TensorSpec, variant.TensorSpec]:
    """The baseline's input (features, dynamic batch) and output (one unit per class; one for binary)."""
    out_units = 1 if schema.task == "binary" else schema.num_classes
    return (variant.TensorSpec("input", [None, *schema.feature_shape], "float32"),
            variant.TensorSpec("output", [None, out_units], "float32"))
