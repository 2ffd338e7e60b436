"""THE registry of variant formats.

One table drives loading, help text and the report: a new format is one new module here plus one
row in FORMATS. Each format module exposes `load(variant_dir, meta, threads) -> Runner`; producing a
variant (export/convert) also lives in the format's module.

A Runner takes float input shaped like the dataset's features and returns float probabilities;
quantization of inputs and outputs (int8 scale/zero point from kfopt.json) happens inside it, so
evaluation, verification and the benchmark treat every format alike.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from kfopt import variant
from kfopt.errors import ArtifactError


class Runner(Protocol):
    meta: variant.VariantMeta

    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    module: str
    runtime: str  # what executes it
    targets: tuple[str, ...]  # deployment targets it can serve
    hardware: tuple[str, ...]  # where its benchmark can run (a figure counts only where measured)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("savedmodel", "kfopt.formats.savedmodel", "TensorFlow", ("cpu",), ("cpu",)),
    Format("tflite", "kfopt.formats.tflite", "LiteRT", ("cpu", "edge"), ("cpu",)),
    Format("onnx", "kfopt.formats.onnx", "ONNX Runtime", ("cpu",), ("cpu",)),
    Format("openvino", "kfopt.formats.openvino", "OpenVINO", ("cpu",), ("cpu",)),
    Format("tensorrt", "kfopt.formats.tensorrt", "TensorRT", ("gpu",), ("gpu",)),
    Format("xla", "kfopt.formats.xla", "TensorFlow XLA", ("tpu", "cpu"), ("cpu", "tpu")),
    Format("torch", "kfopt.formats.torch", "PyTorch (eager)", ("cpu",), ("cpu",)),
    Format("torch_compile", "kfopt.formats.torch_compiled", "PyTorch (torch.compile)", ("cpu",), ("cpu",)),
    Format("torch_pt2e", "kfopt.formats.torch_compiled", "PyTorch (torch.compile, PT2E int8)", ("cpu",), ("cpu",)),
]}


def get(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ArtifactError(f"Unknown variant format {name!r}; known formats: {', '.join(FORMATS)}.") from None


def device_missing(hardware: str, accelerator: str | None = None) -> str | None:
    """Why this node cannot run `hardware` figures, or None when it can.

    `accelerator` is the fingerprint's accelerator field when the caller already has one.
    """
    from kfopt.fingerprint import collect

    acc = accelerator if accelerator is not None else collect()["accelerator"]
    if hardware == "gpu" and "NVIDIA" not in acc:
        return "no CUDA device on this node"
    if hardware == "tpu" and "TPU" not in acc:
        return "no TPU device on this node"
    return None


def load(variant_dir: Path, threads: int | None = None, verify: bool = True) -> Runner:
    """Load a variant folder as a Runner (checksums checked first)."""
    meta = variant.read(variant_dir, verify=verify)
    if meta.status != "ok":  # skipped, or failed (kfopt.stage.optional_stage)
        raise ArtifactError(f"Variant {meta.name!r} was {meta.status} ({meta.reason}); it has no model to run.")
    module = importlib.import_module(get(meta.format).module)
    return module.load(Path(variant_dir), meta, threads=threads)
