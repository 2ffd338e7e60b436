"""The export stage: the baseline as float32 TFLite and ONNX variants, so formats compare from day one.

The model comes from the adapter of the baseline's source framework (kfopt.json `framework`); ONNX
goes through the onnx_export pass (any framework's `export_onnx`), TFLite only where the framework
converts to it directly (the "tflite" capability: Keras), else that variant is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from kfopt import frameworks, variant

#: name → (format, precision, target) of each export, for the variant and for its skipped stand-in.
EXPORTS = {"tflite_fp32": ("tflite", "fp32", "edge"), "onnx_fp32": ("onnx", "fp32", "cpu")}


def child_meta(parent: variant.VariantMeta, name: str, **changes: Any) -> variant.VariantMeta:
    """A new variant's metadata derived from its parent (shapes, task), with lineage recorded."""
    meta = dataclasses.replace(parent, name=name, parent=parent.name, files={}, extra={}, params={},
                               status="ok", reason=None,
                               input=dataclasses.replace(parent.input), output=dataclasses.replace(parent.output))
    for key, value in changes.items():
        setattr(meta, key, value)
    return meta


def run(baseline_dir: Path, out_dir: Path, *, tflite: bool = True, onnx: bool = True, opset: int = 17) -> dict[str, Any]:
    from kfopt.formats import tflite as tflite_fmt
    from kfopt.passes import lacks, onnx_export

    parent = variant.read(baseline_dir)
    cfg = onnx_export.Config(opset)
    why_not = {"tflite_fp32": None if tflite else "switched off by a pipeline parameter (export_tflite)",
               "onnx_fp32": None if onnx else "switched off by a pipeline parameter (export_onnx)"}
    why_not["tflite_fp32"] = why_not["tflite_fp32"] or lacks(parent, "tflite")
    why_not["onnx_fp32"] = why_not["onnx_fp32"] or onnx_export.refusal(parent)
    model = frameworks.of(parent).load(baseline_dir) if not all(why_not.values()) else None
    makers = {
        "tflite_fp32": lambda d: tflite_fmt.write_variant(tflite_fmt.convert(model), d, child_meta(
            parent, "tflite_fp32", technique="export", target="edge")),
        "onnx_fp32": lambda d: onnx_export.export(baseline_dir, d, cfg, model=model),
    }
    metrics: dict[str, Any] = {}
    with variant.staged_dir(Path(out_dir)) as tmp:
        for name, make in makers.items():
            if why_not[name]:
                fmt, precision, target = EXPORTS[name]
                variant.write_skipped(tmp / name, name, fmt, target, why_not[name], technique="export",
                                      parent=parent.name, precision=precision)
                continue
            start = time.perf_counter()
            make(tmp / name)
            metrics[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
    return metrics
