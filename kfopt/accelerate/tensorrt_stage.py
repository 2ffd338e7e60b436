"""The TensorRT stage: strongly typed FP16 and INT8 engines from the ONNX variants, for the GPU pool.

    trt_fp16  ← onnx_fp32 (exports), converted to float16 with sensitive ops kept in float32
    trt_int8  ← the quantize stage's variant marked `tensorrt_ready` (symmetric QDQ, float bias)

An engine is a model only when it was built on a CUDA device. Without one, the stage still builds
with `tensorrt_rtx` when that is installed (it builds without a GPU) and keeps the engine as a
parse/build proof in a variant marked skipped; without any TensorRT module, the variants are
skipped with that reason. A graph TensorRT cannot parse gives a skipped variant whose kfopt.json
lists every offending node. Nothing here fabricates an engine or a timing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from kfopt import formats, variant
from kfopt.accelerate import onnx_fp16
from kfopt.errors import ModelError
from kfopt.export import child_meta
from kfopt.formats import onnx as onnx_fmt
from kfopt.formats import tensorrt as trt_fmt

TECHNIQUE = "tensorrt"
#: the engines this stage builds: name → precision
ENGINES = {"trt_fp16": "fp16", "trt_int8": "int8"}


def _find(root: Path | None, match: Callable[[variant.VariantMeta], bool]) -> tuple[Path, variant.VariantMeta] | None:
    if root is None:
        return None
    for vdir in variant.discover(Path(root)):
        meta = variant.read(vdir, verify=False)
        if match(meta):
            return vdir, meta
    return None


def _sources(exports_dir: Path, quantized_dir: Path | None) -> dict[str, Any]:
    """name → (source dir, meta) or the reason there is no usable source, found by kfopt.json, not by name.

    trt_fp16 takes the exports' ONNX fp32 variant; trt_int8 the quantize stage's ONNX variant marked
    `tensorrt_ready` (symmetric QDQ), which carries the mark even when it was skipped, so that its
    reason (switched off, missed its in-stage check) carries over.
    """
    fp32 = _find(exports_dir, lambda m: m.format == "onnx" and m.precision == "fp32")
    int8 = _find(quantized_dir, lambda m: m.format == "onnx" and bool(m.extra.get("tensorrt_ready")))
    out: dict[str, Any] = {}
    for name, found, missing, root in (
        ("trt_fp16", fp32, "no ONNX fp32 variant among the exports", exports_dir),
        ("trt_int8", int8, "no TensorRT-ready int8 variant was given (the quantize stage's symmetric-QDQ "
                           "onnx_int8_trt)", quantized_dir),
    ):
        broke = _find(root, lambda m: m.failed) if found is None else None  # kfopt.stage.optional_stage
        if broke is not None:
            out[name] = f"its source stage failed: {broke[1].reason}"
        elif found is None:
            out[name] = missing
        elif found[1].status != "ok":
            out[name] = f"its source {found[1].name} was {found[1].status}: {found[1].reason}"
        else:
            out[name] = found
    return out


def _environment() -> tuple[Any, str | None, str | None]:
    """(TensorRT module or None, why no GPU engine can be made here, why nothing can be built here)."""
    no_device = formats.device_missing("gpu")
    if no_device is None:
        trt, missing = trt_fmt.resolve()
        return trt, None, missing
    rtx, _ = trt_fmt.resolve(("tensorrt_rtx",))
    if rtx is not None:  # builds without a GPU: a parse/build proof
        return rtx, no_device, None
    gpu_only, missing = trt_fmt.resolve()
    if gpu_only is not None:
        return None, no_device, f"{no_device} (the tensorrt builder needs one; tensorrt-rtx-cu12 would build a proof)"
    return None, no_device, f"{missing} and {no_device}"


def _build_one(name: str, src_dir: Path, src: variant.VariantMeta, vdir: Path, trt, no_gpu: str | None,
               settings: dict[str, Any], cache: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Build one engine into vdir; write its variant (ok, or skipped with the proof or the parse report)."""
    variant.read(src_dir)  # checksums of the source, before anything is built from it
    precision = ENGINES[name]
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(src_dir) / onnx_fmt.FILENAME
        if precision == "fp16":
            import onnx

            try:
                proto, extra["fp16_conversion"] = onnx_fp16.convert(onnx.load(str(onnx_path)))
            except ModelError as exc:  # a graph TensorRT cannot take in float16 is a row, like a parse failure
                reason = f"cannot convert {src.name} to float16: {exc}"
                log(f"  {name:<10} skipped: {reason}")
                return variant.write_skipped(vdir, name, "tensorrt", "gpu", reason, technique=TECHNIQUE,
                                             parent=src.name, precision=precision).to_dict()
            onnx_path = Path(scratch) / "model.fp16.onnx"
            onnx.save(proto, str(onnx_path))
        result = trt_fmt.build_engine(onnx_path, vdir, **settings, timing_cache_path=cache,
                                      engine_name=trt_fmt.PROOF_FILE if no_gpu else trt_fmt.ENGINE_FILE, module=trt)
    extra.update(result)
    builder = f"{result['builder']['module']} {result['builder']['version']}"
    if not result["parsed"]:
        reason = (f"TensorRT ({builder}) cannot parse {src.name}: {len(result['parse_errors'])} unsupported node(s): "
                  f"{trt_fmt.describe_parse_errors(result['parse_errors'])}")
    elif result["engine_file"] is None:
        reason = f"TensorRT ({builder}) could not build an engine from {src.name}: {result['build_error']}"
    elif no_gpu:
        reason = f"{no_gpu}: engine built by {builder} as a parse/build proof only (not deployable)"
    else:
        reason = None
    log(f"  {name:<10} " + (reason or f"built by {builder}: {result['engine_bytes']} bytes"))
    if reason:
        return variant.write_skipped(vdir, name, "tensorrt", "gpu", reason, technique=TECHNIQUE, parent=src.name,
                                     precision=precision, **extra).to_dict()
    meta = child_meta(src, name, format="tensorrt", runtime=result["builder"]["module"], precision=precision,
                      target="gpu", technique=TECHNIQUE, params=dict(settings), extra=extra)
    return variant.write(vdir, meta).to_dict()


def run(exports_dir: Path, out_dir: Path, *, quantized_dir: Path | None = None, enabled: bool = True,
        min_batch: int = 1, opt_batch: int = 64, max_batch: int = 256, workspace_mb: int = 1024,
        fp16: bool = True, int8: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write trt_fp16 and trt_int8 into out_dir (a variant set) and return the stage's metrics."""
    trt_fmt.check_profile(min_batch, opt_batch, max_batch)
    settings = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch, "workspace_mb": workspace_mb}
    sources = _sources(Path(exports_dir), Path(quantized_dir) if quantized_dir else None)
    trt, no_gpu, cannot_build = _environment()
    wanted = {"trt_fp16": fp16, "trt_int8": int8}
    metrics: dict[str, Any] = {}
    with variant.staged_dir(Path(out_dir)) as tmp:
        for name, source in sources.items():
            vdir = tmp / name
            precision = ENGINES[name]
            if not (enabled and wanted[name]):
                reason = f"switched off by a pipeline parameter ({'tensorrt_enabled' if not enabled else 'tensorrt_' + precision})"
            elif isinstance(source, str):
                reason = source
            else:
                reason = cannot_build
            if reason:
                log(f"  {name:<10} skipped: {reason}")
                variant.write_skipped(vdir, name, "tensorrt", "gpu", reason, technique=TECHNIQUE, precision=precision,
                                      parent=None if isinstance(source, str) else source[1].name)
                metrics[f"{name}_built"] = False
                continue
            meta = _build_one(name, *source, vdir, trt, no_gpu, settings, tmp / trt_fmt.TIMING_CACHE_FILE, log)
            extra = meta["extra"]
            metrics[f"{name}_built"] = extra.get("engine_file") is not None
            metrics[f"{name}_parse_errors"] = len(extra.get("parse_errors", []))
            if "build_seconds" in extra:
                metrics[f"{name}_build_seconds"] = extra["build_seconds"]
    return metrics
