"""The TensorRT-ready int8 of any ONNX fp32 variant: symmetric QDQ with the bias left in float.

TensorRT parses symmetric activations and weights (zero point 0) and wants float bias; that form is
slower on ONNX Runtime than kfopt.passes.ort_int8's, hence a variant of its own, marked
`tensorrt_ready` in kfopt.json (the TensorRT stage builds its int8 engine from it, found by that mark).
The quantizer, calibration and fallback are ort_int8's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kfopt import variant
from kfopt.passes import Context, lineage, ort_int8

NAME = "ort_int8_trt"
FORMAT, PRECISION, TARGET, TECHNIQUE = "onnx", "int8", "gpu", "quantize"
SKIPPED_EXTRA = {"tensorrt_ready": True}  # a skipped one still tells the TensorRT stage why there is no engine
EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


@dataclasses.dataclass(frozen=True)
class Config(ort_int8.Config):
    """Settings of the TensorRT-ready QDQ pass: ort_int8's."""


refusal = ort_int8.refusal


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}onnx_int8_trt"


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    parent = variant.read(parent_dir, verify=False)
    return ort_int8.quantize(parent_dir, out_dir, ctx, cfg, name_for(parent), TARGET, EXTRA_OPTIONS,
                             {"symmetric": True, "bias": "float"}, {"tensorrt_ready": True})
