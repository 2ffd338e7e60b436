"""The export stage: the baseline as float32 TFLite and ONNX variants, so formats compare from day one."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from kfopt import variant
from kfopt.formats import onnx as onnx_fmt
from kfopt.formats import savedmodel
from kfopt.formats import tflite as tflite_fmt


def child_meta(parent: variant.VariantMeta, name: str, **changes: Any) -> variant.VariantMeta:
    """A new variant's metadata derived from its parent (shapes, task), with lineage recorded."""
    meta = dataclasses.replace(parent, name=name, parent=parent.name, files={}, extra={}, params={},
                               status="ok", reason=None,
                               input=dataclasses.replace(parent.input), output=dataclasses.replace(parent.output))
    for key, value in changes.items():
        setattr(meta, key, value)
    return meta


def run(baseline_dir: Path, out_dir: Path, *, tflite: bool = True, onnx: bool = True, opset: int = 17) -> dict[str, Any]:
    parent = variant.read(baseline_dir)
    model = savedmodel.load_keras(baseline_dir)
    metrics: dict[str, Any] = {}
    with variant.staged_dir(Path(out_dir)) as tmp:
        for enabled, name, make in (
            (tflite, "tflite_fp32", lambda d: tflite_fmt.write_variant(
                tflite_fmt.convert(model), d, child_meta(parent, "tflite_fp32", technique="export", target="edge"))),
            (onnx, "onnx_fp32", lambda d: onnx_fmt.write_variant(
                onnx_fmt.from_keras(model, parent.input, opset), d,
                child_meta(parent, "onnx_fp32", technique="export", params={"opset": opset}))),
        ):
            if not enabled:
                variant.write_skipped(tmp / name, name, name.split("_")[0], "cpu", "switched off by a pipeline parameter",
                                      technique="export", parent=parent.name)
                continue
            start = time.perf_counter()
            make(tmp / name)
            metrics[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
    return metrics
