"""Quantization-aware training: tfmot's quantize_model, a short fine-tune, then int8 TFLite (Keras only).

The fine-tune learns the int8 ranges, so there is no fallback: the result is checked (in-stage check,
recorded) and kept. A model tfmot cannot annotate gets a skipped variant with tfmot's reason; the other
variants of the stage are made anyway. tfmot is Keras code by nature: this pass asks the model's
framework for the "qat" capability and then works on the Keras object the adapter loads.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from kfopt import frameworks, variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError, ModelError
from kfopt.export import child_meta
from kfopt.formats import tflite as tflite_fmt
from kfopt.passes import FINE_TUNE_BATCH, Context, knob, lacks, lineage, skip, technique
from kfopt.passes.check import KEY

NAME = "qat"
FORMAT, PRECISION, TARGET, TECHNIQUE = "tflite", "int8", "edge", "qat"
LEARNING_RATE = 1e-4  # fine-tuning a trained model: a tenth of the default training rate
SEED = 1


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the QAT pass."""

    epochs: int = knob(2, "quantize.qat_epochs", "Fine-tuning epochs of quantization-aware training.")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"qat_epochs must be at least 1, got {self.epochs}.")


def refusal(meta: variant.VariantMeta) -> str | None:
    if meta.precision != "fp32":
        return f"quantization-aware training starts from a float32 model; {meta.name} is {meta.precision}"
    return lacks(meta, "qat")


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}tflite_qat_int8"


def qat_model(model, ds: ds_mod.Dataset, epochs: int, seed: int = SEED):
    """tfmot quantize_model + a short fine-tune on the training split."""
    import tensorflow_model_optimization as tfmot

    from kfopt.frameworks import keras as adapter

    try:
        qat = tfmot.quantization.keras.quantize_model(model)
    except (ValueError, RuntimeError, TypeError) as exc:  # tfmot refuses layers it cannot annotate
        raise ModelError(f"tfmot quantize_model cannot wrap this model: {str(exc).strip().splitlines()[0]}") from None
    adapter.fine_tune(qat, ds, epochs=epochs, learning_rate=LEARNING_RATE, batch_size=FINE_TUNE_BATCH, seed=seed)
    return qat


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    parent = variant.read(parent_dir)
    try:
        trained = qat_model(frameworks.of(parent).load(parent_dir), ctx.ds, cfg.epochs, SEED)
    except ModelError as exc:  # a model QAT cannot handle still gets the stage's other variants, and the reason
        return skip(sys.modules[__name__], parent, out_dir, str(exc))
    meta = tflite_fmt.write_variant(tflite_fmt.from_qat(trained), out_dir, child_meta(
        parent, name_for(parent), technique=technique(parent, TECHNIQUE), precision=PRECISION, target=TARGET,
        params={"mode": "quantization-aware training", "epochs": cfg.epochs, "learning_rate": LEARNING_RATE,
                "io": "int8"}))
    meta.extra[KEY] = ctx.check.after(parent_dir).check(out_dir)  # recorded; QAT has no fallback
    return variant.write(out_dir, meta)
