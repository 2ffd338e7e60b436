"""Full-integer int8 TFLite of any fp32 variant whose framework converts to TFLite directly (Keras).

Calibrated on the stage's calibration samples (training split), int8 input and output (the LiteRT
runner quantizes with the scale/zero point recorded in kfopt.json), conv weights per channel. When
the first conversion misses the in-stage check, the accuracy-aware fallback ranks ops with the
QuantizationDebugger (RMSE of each op's int8 output against its float output, in quantization steps)
and keeps the worst in float with its deny-list (kfopt.formats.tflite.Int8Converter).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kfopt import frameworks, variant
from kfopt.errors import ConfigError
from kfopt.export import child_meta
from kfopt.formats import tflite as tflite_fmt
from kfopt.passes import Context, knob, lacks, lineage, technique
from kfopt.passes.fallback import with_fallback

NAME = "tflite_int8"
FORMAT, PRECISION, TARGET, TECHNIQUE = "tflite", "int8", "edge", "quantize"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the TFLite int8 pass."""

    fallback_max_attempts: int = knob(3, "quantize.fallback_max_attempts",
                                      "Retries with the worst ops kept in float when int8 misses the in-stage "
                                      "check (0: no fallback).")
    calibration_samples_requested: int = knob(200, "quantize.calibration_samples",
                                              "Calibration samples asked for (recorded; the stage draws them).")

    def __post_init__(self) -> None:
        if self.fallback_max_attempts < 0:
            raise ConfigError(f"fallback_max_attempts must be >= 0 (0 = no fallback), got {self.fallback_max_attempts}.")


def refusal(meta: variant.VariantMeta) -> str | None:
    if meta.precision != "fp32":
        return f"TFLite int8 calibrates a float32 model; {meta.name} is {meta.precision}"
    return lacks(meta, "tflite")


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}{NAME}"


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    """The int8 TFLite of the model at `parent_dir`, through the fallback, checked with the budget it left."""
    parent = variant.read(parent_dir)
    maker = tflite_fmt.Int8Converter(frameworks.of(parent).load(parent_dir), ctx.samples)
    params = {"mode": "full-int8", "io": "int8", "calibration_samples": len(ctx.samples),
              "per_channel": "conv (dense per-tensor)",
              "calibration_samples_requested": cfg.calibration_samples_requested}

    def make(vdir: Path, float_layers: list[str]) -> variant.VariantMeta:
        return tflite_fmt.write_variant(maker.convert(float_layers), vdir, child_meta(
            parent, name_for(parent), technique=technique(parent, TECHNIQUE), precision=PRECISION, target=TARGET,
            params=dict(params)))

    return with_fallback(make, maker.rank, ctx.check.after(parent_dir), out_dir, cfg.fallback_max_attempts,
                         "RMSE of the op's int8 output vs its float output, in quantization steps")
