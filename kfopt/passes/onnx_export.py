"""ONNX fp32 of any variant that holds its framework's own model (the baseline, a pruned model, a student).

The adapter of the variant's source framework exports it (kfopt.frameworks: `export_onnx`, dynamic
batch), the peephole clean-up (kfopt.formats.onnx_peephole) removes what the converter left behind, so the ONNX passes (ort_int8, ort_int8_trt, OpenVINO) can follow any model. The export stage
makes the baseline's `onnx_fp32` with it; prune and distill chain it before ort_int8.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kfopt import frameworks, variant
from kfopt.errors import ConfigError, KfoptError
from kfopt.export import child_meta
from kfopt.formats import onnx as onnx_fmt
from kfopt.formats import onnx_peephole
from kfopt.passes import Context, knob, lineage, technique

NAME = "onnx_export"
FORMAT, PRECISION, TARGET, TECHNIQUE = "onnx", "fp32", "cpu", "export"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the ONNX export."""

    opset: int = knob(17, "export.opset", "ONNX opset of the exported graph.")

    def __post_init__(self) -> None:
        if self.opset < 11:
            raise ConfigError(f"export.opset must be at least 11 (kfopt's converters need it), got {self.opset}.")


def refusal(meta: variant.VariantMeta) -> str | None:
    """The variant must hold its source framework's own fp32 model (kfopt.json: format, framework)."""
    try:
        own = frameworks.of(meta).FORMAT
    except KfoptError as exc:
        return f"no adapter can load {meta.name}: {exc}"
    if meta.format != own or meta.precision != "fp32":
        return (f"ONNX export starts from the {meta.framework} model itself ({own}, fp32); "
                f"{meta.name} is {meta.format} {meta.precision}")
    batch = (meta.extra.get("input_check") or {}).get("static_batch")
    if batch and meta.framework == "torch":
        from kfopt.frameworks.torch import SAVE_HINT

        return (f"the torch program was exported with a static batch of {batch}, so its ONNX could serve only "
                f"that batch; to get ONNX, OpenVINO and TensorRT variants, {SAVE_HINT}")
    return None


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}onnx_fp32"


def export(parent_dir: Path, out_dir: Path, cfg: Config, model=None) -> variant.VariantMeta:
    """The ONNX of the model at `parent_dir` (or of `model`, already loaded from there)."""
    parent = variant.read(parent_dir)
    adapter = frameworks.of(parent)
    model = adapter.load(parent_dir) if model is None else model
    meta = child_meta(parent, name_for(parent), technique=technique(parent, TECHNIQUE), precision=PRECISION,
                      target=TARGET, params={"opset": cfg.opset})
    features = tuple(1 if d is None else int(d) for d in parent.input.shape[1:])
    proto, meta.extra["peephole"] = onnx_peephole.optimize(adapter.export_onnx(model, parent.input, cfg.opset),
                                                           features)
    return onnx_fmt.write_variant(proto, out_dir, meta)


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    """Export, then record the in-stage check (with the parent's budget) so its children know what is spent."""
    export(parent_dir, out_dir, cfg)
    return ctx.check.after(parent_dir).record(out_dir)
