"""TensorFlow SavedModel: the baseline's format (also loadable back as a tf-keras model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kfopt import variant

DIRNAME = "saved_model"


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


def load_keras(variant_dir: Path):
    """The tf-keras model back, for optimization stages (tfmot needs the Keras object)."""
    from kfopt.tfenv import keras

    return keras().models.load_model(str(Path(variant_dir) / DIRNAME), compile=False)


class SavedModelRunner:
    def __init__(self, variant_dir: Path, meta: variant.VariantMeta, threads: int | None):
        from kfopt.tfenv import set_threads, tf

        t = tf()
        set_threads(threads)
        self.meta = meta
        self._tf = t
        loaded = t.saved_model.load(str(Path(variant_dir) / DIRNAME))
        self._keep = loaded
        self._fn = loaded.signatures["serving_default"]
        self._out_key = next(iter(self._fn.structured_outputs))

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self._fn(self._tf.constant(x, self._tf.float32))
        return out[self._out_key].numpy()


def load(variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None) -> SavedModelRunner:
    return SavedModelRunner(variant_dir, meta, threads)
