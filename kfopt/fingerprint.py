"""Where a figure was measured: CPU model and ISA flags, cores, accelerator, library versions.

Two reports are comparable only when their fingerprints match; the regression gate checks that.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

LIBRARIES = ("kfopt", "tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "onnx", "numpy",
             "openvino", "nncf", "tensorrt", "tensorrt-rtx-cu12", "torch", "torchao", "torch-pruning")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _accelerator() -> str:
    gpus = sorted(Path("/dev").glob("nvidia[0-9]*"))
    if gpus:
        return f"{len(gpus)} NVIDIA GPU(s)"
    if list(Path("/dev").glob("accel*")) or list(Path("/dev").glob("vfio/[0-9]*")):
        return "TPU device(s)"
    return "none"


def collect() -> dict:
    model, flags = _cpuinfo()
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu": model, "cpu_flags": sorted(f for f in FLAGS if f in flags),
            "cores": os.cpu_count(), "machine": platform.machine(), "accelerator": _accelerator(),
            "python": platform.python_version(), "libraries": versions}


def key(fp: dict) -> tuple:
    """What must match for latencies to be comparable."""
    return (fp.get("cpu"), fp.get("cores"), fp.get("accelerator"), tuple(fp.get("cpu_flags", ())))
