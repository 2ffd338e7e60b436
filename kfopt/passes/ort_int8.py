"""ORT static int8 of any ONNX fp32 variant: QDQ, per-channel weights, int8 activations and weights.

The parent's model.onnx goes through quant_pre_process (shape inference and graph optimization), then
`quantize_static` with MinMax calibration on the stage's calibration samples. QDQ models keep float
input and output, so the ONNX runner serves them as it serves fp32. When the first attempt misses the
in-stage check, the accuracy-aware fallback ranks nodes by how much each lowers the signal-to-
quantization-noise ratio of the activations against the fp32 model (onnxruntime.quantization.
qdq_loss_debug) and excludes the worst with `nodes_to_exclude`. kfopt.passes.ort_int8_trt is the same
quantizer in the symmetric form TensorRT parses.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.errors import ConfigError
from kfopt.export import child_meta
from kfopt.formats import onnx as onnx_fmt
from kfopt.passes import Context, knob, lineage, technique
from kfopt.passes.fallback import with_fallback

NAME = "ort_int8"
FORMAT, PRECISION, TARGET, TECHNIQUE = "onnx", "int8", "cpu", "quantize"
DEBUG_SAMPLES = 64  # samples the per-node error analysis runs on (it runs only when int8 misses its check)


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the ORT static int8 pass."""

    fallback_max_attempts: int = knob(3, "quantize.fallback_max_attempts",
                                      "Retries with the worst nodes excluded from quantization when int8 misses "
                                      "the in-stage check (0: no fallback).")

    def __post_init__(self) -> None:
        if self.fallback_max_attempts < 0:
            raise ConfigError(f"fallback_max_attempts must be >= 0 (0 = no fallback), got {self.fallback_max_attempts}.")


def refusal(meta: variant.VariantMeta) -> str | None:
    """Any ONNX fp32 variant, whatever framework it came from (kfopt.json's format and precision)."""
    if meta.format != "onnx" or meta.precision != "fp32":
        return f"ORT static int8 quantizes an ONNX fp32 model; {meta.name} is {meta.format} {meta.precision}"
    return None


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}onnx_int8"


class _Reader:
    """ORT calibration reader over the calibration samples, in batches (a CalibrationDataReader by duck
    typing: ORT's base class accepts any object with get_next)."""

    def __init__(self, samples: np.ndarray, input_name: str, batch: int = 32):
        self._batches = iter([{input_name: samples[i:i + batch]} for i in range(0, len(samples), batch)])

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter(self.get_next, None)


class Quantizer:
    """ORT static int8 QDQ (per-channel weights) of one preprocessed fp32 ONNX model."""

    def __init__(self, float_path: Path, samples: np.ndarray, workdir: Path, extra_options: dict[str, Any] | None):
        import onnx

        self.float_path, self.samples, self.extra_options = Path(float_path), samples, extra_options
        self.workdir = Path(tempfile.mkdtemp(dir=workdir))
        self.input_name = onnx.load(str(float_path)).graph.input[0].name
        self._first: Path | None = None
        self._made = 0

    def convert(self, float_layers: list[str]) -> Path:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        self._made += 1
        out = self.workdir / f"qdq_{self._made}.onnx"
        quantize_static(str(self.float_path), str(out), _Reader(self.samples, self.input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(float_layers) or None,
                        extra_options=dict(self.extra_options) if self.extra_options else None)
        if not float_layers and self._first is None:
            self._first = out
        return out

    def rank(self) -> list[tuple[str, float]]:
        """Quantized nodes worst first by the drop (dB) in activation SQNR vs fp32 across the node."""
        import onnx
        from onnxruntime.quantization import qdq_loss_debug as dbg

        first = self._first or self.convert([])
        aug_float, aug_qdq = self.workdir / "aug_float.onnx", self.workdir / "aug_qdq.onnx"
        dbg.modify_model_output_intermediate_tensors(str(self.float_path), str(aug_float))
        dbg.modify_model_output_intermediate_tensors(str(first), str(aug_qdq))
        samples = self.samples[:DEBUG_SAMPLES]
        activations = {path: dbg.collect_activations(str(path), _Reader(samples, self.input_name))
                       for path in (aug_float, aug_qdq)}
        matched = dbg.create_activation_matching(activations[aug_qdq], activations[aug_float])
        sqnr = {t: e["xmodel_err"] for t, e in dbg.compute_activation_error(matched).items() if "xmodel_err" in e}
        graph = onnx.load(str(first)).graph
        producer = {out: node for node in graph.node for out in node.output}

        def float_tensor(name: str) -> str | None:
            node = producer.get(name)
            if node is None or node.op_type != "DequantizeLinear":
                return name
            quant = producer.get(node.input[0])
            return quant.input[0] if quant is not None and quant.op_type == "QuantizeLinear" else None  # a weight

        ranking = []
        for node in graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            if not any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in node.input):
                continue  # not quantized
            inputs = [sqnr[t] for t in map(float_tensor, node.input) if t in sqnr]
            if inputs and node.output[0] in sqnr and min(inputs) - sqnr[node.output[0]] > 0:
                ranking.append((node.name, float(min(inputs) - sqnr[node.output[0]])))
        return sorted(ranking, key=lambda p: -p[1])


def preprocessed(parent_dir: Path, workdir: Path) -> Path:
    """The parent's ONNX through quant_pre_process (shape inference + graph optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = Path(tempfile.mkdtemp(dir=workdir)) / "float_pre.onnx"
    quant_pre_process(str(Path(parent_dir) / onnx_fmt.FILENAME), str(pre))
    return pre


def quantize(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config, name: str, target: str,
             extra_options: dict[str, Any] | None, params: dict[str, Any],
             extra: dict[str, Any]) -> variant.VariantMeta:
    """One int8 variant of the ONNX at `parent_dir` through the fallback; shared with the TensorRT form."""
    import onnx

    parent = variant.read(parent_dir)
    maker = Quantizer(preprocessed(parent_dir, ctx.workdir), ctx.samples, ctx.workdir, extra_options)
    params = {"format": "QDQ", "per_channel": True, "activations": "int8", "weights": "int8",
              "calibration_samples": len(ctx.samples), "calibration": "MinMax", "preprocessed": "quant_pre_process",
              **params}

    def make(vdir: Path, float_layers: list[str]) -> variant.VariantMeta:
        meta = child_meta(parent, name, technique=technique(parent, TECHNIQUE), precision=PRECISION, target=target,
                          params=dict(params), extra=dict(extra))
        return onnx_fmt.write_variant(onnx.load(str(maker.convert(float_layers))), vdir, meta)

    return with_fallback(make, maker.rank, ctx.check.after(parent_dir), out_dir, cfg.fallback_max_attempts,
                         "drop in activation SQNR (dB) vs the fp32 model across the node")


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    parent = variant.read(parent_dir, verify=False)
    return quantize(parent_dir, out_dir, ctx, cfg, name_for(parent), TARGET, None, {}, {})
