"""A variant laid out as a Triton Inference Server model repository, so it can be served as it is.

`tritonserver --model-repository=<deployment>/triton` serves what `write_repository` lays out:

    triton/<model>/config.pbtxt      platform, max_batch_size, input/output names, types and dims
    triton/<model>/1/model.onnx      (or model.plan for a TensorRT engine)
    triton/<model>/labels.txt        class names, when known, for Triton's classification extension

Everything in config.pbtxt comes from the variant's kfopt.json, never from guesses: a leading
None in a tensor's shape is the batch dimension, so the model gets max_batch_size > 0 and dims
without it (Triton's rule); any other None is a dynamic dimension, written -1. A model without a
dynamic batch dimension gets max_batch_size 0 and its full shape.
Only formats with a standard Triton backend are laid out: ONNX (onnxruntime_onnx) and TensorRT
engines (tensorrt_plan). TFLite has no standard Triton backend and is served with LiteRT.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kfopt import variant
from kfopt.errors import ArtifactError

# format → (Triton platform, file name Triton loads from the version folder, suffixes of the model file)
PLATFORMS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "onnx": ("onnxruntime_onnx", "model.onnx", (".onnx",)),
    "tensorrt": ("tensorrt_plan", "model.plan", (".plan", ".engine", ".trt")),
}
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
              "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
              "bool": "TYPE_BOOL"}


def servable(fmt: str) -> bool:
    return fmt in PLATFORMS


def _batched(meta: variant.VariantMeta) -> bool:
    return all(spec.shape and spec.shape[0] is None for spec in (meta.input, meta.output))


def _tensor(spec: variant.TensorSpec, batched: bool, labels: bool = False) -> str:
    if spec.dtype not in DATA_TYPES:
        raise ArtifactError(f"Tensor {spec.name!r} has dtype {spec.dtype!r}, which Triton's config has no type for; "
                            f"use one of {', '.join(DATA_TYPES)}.")
    dims = [-1 if d is None else int(d) for d in (spec.shape[1:] if batched else spec.shape)]
    lines = [f'    name: "{spec.name}"', f"    data_type: {DATA_TYPES[spec.dtype]}",
             f"    dims: [ {', '.join(str(d) for d in dims)} ]"]
    if labels:
        lines.append('    label_filename: "labels.txt"')
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(model_name: str, meta: variant.VariantMeta, max_batch_size: int, gpu: bool,
                 labels: bool = False) -> str:
    """Triton's model configuration (protobuf text format) for a variant, from its kfopt.json."""
    if meta.format not in PLATFORMS:
        raise ArtifactError(f"Variant {meta.name!r} is {meta.format}, which Triton's standard backends do not serve; "
                            f"lay out one of: {', '.join(PLATFORMS)}.")
    batched = _batched(meta)
    batch = max(1, int(max_batch_size)) if batched else 0
    lines = [f'name: "{model_name}"', f'platform: "{PLATFORMS[meta.format][0]}"', f"max_batch_size: {batch}",
             f"input [\n{_tensor(meta.input, batched)}\n]", f"output [\n{_tensor(meta.output, batched, labels)}\n]",
             f"instance_group [\n  {{\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n    count: 1\n  }}\n]"]
    if batch > 1:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def model_file(variant_dir: Path, meta: variant.VariantMeta) -> Path:
    """The one file of the variant that Triton loads."""
    suffixes = PLATFORMS[meta.format][2]
    found = [rel for rel in meta.files if Path(rel).suffix in suffixes]
    if len(found) != 1:
        raise ArtifactError(f"Variant {meta.name!r} in {variant_dir} should hold exactly one {'/'.join(suffixes)} "
                            f"file for Triton, found {len(found)}; re-run the stage that made it.")
    return Path(variant_dir) / found[0]


def write_repository(repo_dir: Path, model_name: str, variant_dir: Path, meta: variant.VariantMeta, *,
                     max_batch_size: int, gpu: bool, class_names: list[str] | None = None) -> Path:
    """Lay out `variant_dir` as model `model_name` (version 1) in the Triton repository `repo_dir`."""
    model_dir = Path(repo_dir) / model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_file(variant_dir, meta), model_dir / "1" / PLATFORMS[meta.format][1])
    out_dims = meta.output.shape[-1:] if meta.output.shape else []
    labels = bool(class_names) and out_dims == [len(class_names)]
    if labels:
        (model_dir / "labels.txt").write_text("\n".join(class_names) + "\n")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(model_name, meta, max_batch_size, gpu, labels))
    return model_dir
