"""TensorFlow SavedModel: the format of a Keras baseline, run through its one serving signature.

kfopt.frameworks.keras writes it (and loads the Keras object back for the techniques that need it);
this module only runs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kfopt import variant

DIRNAME = "saved_model"


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
