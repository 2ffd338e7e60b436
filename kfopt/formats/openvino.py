"""OpenVINO IR (`model.xml` + `model.bin`): writing a variant and a CPU runner with pinned settings.

The runner compiles one static-shape program per batch size it is called with (the model is
reshaped to `[batch, ...]` before `compile_model`) and keeps each one: on this AMD EPYC (Zen 5) an
NNCF int8 ResNet50 compiled with a dynamic batch answered correctly at batch 64 and wrongly at
batch 1, and correctly at batch 1 once compiled for a static `[1, ...]`.

It pins what OpenVINO would otherwise choose by itself: `INFERENCE_NUM_THREADS` (the thread count
the benchmark asks for), `PERFORMANCE_HINT` LATENCY with one stream, and `INFERENCE_PRECISION_HINT`
f32 — on a CPU with AVX-512 BF16 OpenVINO may silently run an "fp32" model in bf16. What each
program actually runs with is read back from the compiled model and kept in `runtime_config`,
which the benchmark puts in the result. A program that fails to compile raises a ModelError naming
the variant, the batch size and OpenVINO's reason, so the benchmark records a `failed` row.
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kfopt import variant
from kfopt.errors import ModelError, one_line

XML, BIN = "model.xml", "model.bin"
DEVICE = "CPU"
# Precision OpenVINO computes in, per variant precision. int8 variants compute their float parts
# (first/last layers, softmax) in f32 as well, as their accuracy was checked that way.
PRECISION_HINT = {"fp32": "f32", "int8": "f32"}
READ_BACK = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT",
             "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING")


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Keep OpenVINO's and NNCF's usage telemetry (Google Analytics) off.

    `import openvino` initializes openvino_telemetry, which writes a client id under ~/intel and,
    with no consent file there, counts the user as consenting; NNCF and the model converter do the
    same. A pipeline task has no business phoning home. openvino_telemetry declines when `CI=true`,
    which kfopt sets only around the calls that initialize telemetry, so neither the user's home nor
    the rest of the process is changed.
    """
    old = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = old


def ov():
    """The openvino module, imported with telemetry off."""
    with no_telemetry():
        import openvino

    return openvino


def convert(onnx_path: Path):
    """An ONNX file as an openvino.Model (dynamic batch kept)."""
    with no_telemetry():
        return ov().convert_model(str(onnx_path))


def with_batch(model, batch: int | None, feature_shape: list[int]):
    """A copy of `model` whose input has batch `batch` (None: dynamic) and the given feature shape."""
    copy = model.clone()
    copy.reshape({copy.inputs[0].get_any_name(): [-1 if batch is None else batch, *feature_shape]})
    return copy


def write_variant(model, out_dir: Path, meta: variant.VariantMeta) -> variant.VariantMeta:
    """Save `model` as IR with fp32 weights (save_model compresses weights to fp16 unless told not to)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ov().save_model(model, str(out / XML), compress_to_fp16=False)
    meta.input = variant.TensorSpec(model.inputs[0].get_any_name(), meta.input.shape, "float32")
    meta.output = variant.TensorSpec(model.outputs[0].get_any_name(), meta.output.shape, "float32")
    meta.format, meta.runtime = "openvino", "openvino"
    meta.extra.setdefault("openvino_version", ov().get_version())
    return variant.write(out, meta)


def compile_config(meta: variant.VariantMeta, threads: int | None) -> dict[str, Any]:
    """The properties kfopt pins for a variant; the thread count only when the caller asks for one."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                              "INFERENCE_PRECISION_HINT": PRECISION_HINT.get(meta.precision, "f32")}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return one_line(lines[0] if lines else type(exc).__name__)[:400]


def _text(value: Any) -> str:
    """A property value as OpenVINO spells it in configuration: f32, LATENCY, 1, True."""
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    return str(getattr(value, "name", value))


class OpenVinoRunner:
    def __init__(self, variant_dir: Path, meta: variant.VariantMeta, threads: int | None):
        self.meta = meta
        self._ov = ov()
        self._core = self._ov.Core()
        self._config = compile_config(meta, threads)
        self._programs: dict[int, Any] = {}
        self.runtime_config: dict[str, Any] = {
            "runtime": "OpenVINO", "version": self._ov.get_version(), "device": DEVICE,
            "cpu": str(self._core.get_property(DEVICE, "FULL_DEVICE_NAME")),
            "requested": dict(self._config), "programs": {}}
        try:
            self._model = self._core.read_model(str(Path(variant_dir) / XML), str(Path(variant_dir) / BIN))
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO cannot read variant {meta.name!r} ({XML} + {BIN}): {first_line(exc)}; "
                             "re-run the stage that made it.") from None

    def program(self, batch: int):
        """The infer request of the program compiled for exactly `batch` rows (compiled on first use)."""
        if batch not in self._programs:
            try:
                compiled = self._core.compile_model(with_batch(self._model, batch, self.meta.input.shape[1:]),
                                                    DEVICE, self._config)
            except RuntimeError as exc:
                raise ModelError(f"OpenVINO {self._ov.get_version()} could not compile variant {self.meta.name!r} "
                                 f"for batch {batch} on this CPU ({self.runtime_config['cpu']}): "
                                 f"{first_line(exc)}") from None
            self.runtime_config["programs"][str(batch)] = self._describe(compiled)
            self._programs[batch] = compiled.create_infer_request()
        return self._programs[batch]

    @staticmethod
    def _describe(compiled) -> dict[str, Any]:
        """What the program runs with, as OpenVINO reports it, and its layers counted by runtime precision."""
        used = {key: _text(compiled.get_property(key)) for key in READ_BACK}
        ops = collections.Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) not in ("Const", "Input", "Output"):
                ops[info["runtimePrecision"].astype(str)] += 1
        return {**used, "layers_by_precision": dict(sorted(ops.items()))}

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        request = self.program(len(x))
        try:
            return np.asarray(request.infer(x, share_inputs=True)[0], np.float32)  # x is not copied; the output is
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO could not run variant {self.meta.name!r} on input of shape {list(x.shape)}: "
                             f"{first_line(exc)}") from None


def load(variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None) -> OpenVinoRunner:
    return OpenVinoRunner(variant_dir, meta, threads)
