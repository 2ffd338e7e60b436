"""The quantize stage: TFLite dynamic-range, float16 and full-integer int8; ORT static int8 QDQ; QAT.

Variants (all children of the baseline):

    tflite_dynamic   int8 weights, float activations (no calibration)            target edge
    tflite_fp16      float16 weights                                             target edge
    tflite_int8      full integer, int8 input and output, calibrated             target edge
    onnx_int8        ORT static QDQ, per-channel weights, after quant_pre_process target cpu
    onnx_int8_trt    symmetric QDQ with float bias, the form TensorRT parses     target gpu
                     (slower on ORT than onnx_int8, hence a variant of its own)
    tflite_qat_int8  tfmot quantize_model, a short fine-tune, then int8 TFLite   target edge

Calibration uses `calibration_samples` samples (not batches) of the training split. Both int8 paths
with calibration go through the accuracy-aware fallback (kfopt.optimize.gate.with_fallback): TFLite
ranks layers with the QuantizationDebugger (RMSE of each op's int8 output against its float output,
in units of the output's quantization step) and keeps the worst in float with its deny-list; ORT
ranks nodes by how much each one lowers the signal-to-quantization-noise ratio of the activations
against the fp32 model (onnxruntime.quantization.qdq_loss_debug) and excludes them with
`nodes_to_exclude`. The int8 TFLite runner quantizes inputs and dequantizes outputs with the
scale/zero point recorded in kfopt.json; QDQ models keep float input and output.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError, ModelError
from kfopt.export import child_meta
from kfopt.formats import onnx as onnx_fmt
from kfopt.formats import savedmodel
from kfopt.formats import tflite as tflite_fmt
from kfopt.optimize import checks
from kfopt.optimize.gate import FINE_TUNE_BATCH, SWITCHED_OFF, Gate, calibration_set, with_fallback, write_skipped
from kfopt.tfenv import tf

VARIANTS = [("tflite_dynamic", "tflite", "edge"), ("tflite_fp16", "tflite", "edge"),
            ("tflite_int8", "tflite", "edge"), ("onnx_int8", "onnx", "cpu"), ("onnx_int8_trt", "onnx", "gpu"),
            ("tflite_qat_int8", "tflite", "edge")]
DEBUG_SAMPLES = 64  # samples the per-layer error analysis runs on (it runs only when int8 misses the gate)
QAT_LEARNING_RATE = 1e-4  # fine-tuning a trained model: a tenth of the default training rate
# The TensorRT-parsable form: symmetric activations and weights, bias left in float.
TRT_EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def tflite_dynamic(model) -> bytes:
    """Dynamic-range quantization: int8 weights, activations quantized on the fly."""
    return tflite_fmt.convert(model, [tf().lite.Optimize.DEFAULT])


def tflite_fp16(model) -> bytes:
    converter = tflite_fmt.converter(model)
    converter.optimizations = [tf().lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf().float16]
    return converter.convert()


class TFLiteInt8:
    """Full-integer int8 TFLite (int8 input and output) of one model, with selective quantization.

    Convolutions get per-channel weight scales; dense layers per-tensor (the classic TFLite int8 FC
    scheme): per-channel dense costs 24 bytes of scale/zero point per output unit, ~10% of a small
    model's file, for no accuracy gain measured here.
    """

    def __init__(self, model, samples: np.ndarray):
        self.model, self.samples = model, samples
        self._debugger = None

    def converter(self):
        t = tf()
        converter = tflite_fmt.converter(self.model)
        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s[None]] for s in self.samples)
        converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = t.int8
        converter.inference_output_type = t.int8
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        return converter

    def convert(self, float_layers: list[str]) -> bytes:
        if not float_layers:
            return self.converter().convert()
        debugger = self.debugger()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                debugger.options = tf().lite.experimental.QuantizationDebugOptions(
                    denylisted_nodes=list(float_layers), fully_quantize=True)
            except ValueError:
                pass  # every op is in float, so its debug model has nothing to verify; the options are set
            return debugger.get_nondebug_quantized_model()

    def debugger(self):
        if self._debugger is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the debugger runs the deprecated tf.lite.Interpreter
                self._debugger = tf().lite.experimental.QuantizationDebugger(
                    converter=self.converter(),
                    debug_dataset=lambda: ([s[None]] for s in self.samples[:DEBUG_SAMPLES]))
        return self._debugger

    def rank(self) -> list[tuple[str, float]]:
        """Ops worst first by RMSE(int8 output - float output) / quantization step of the output."""
        debugger = self.debugger()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            debugger.options = tf().lite.experimental.QuantizationDebugOptions()
            debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
        errors: dict[str, float] = {}
        for row in csv.DictReader(io.StringIO(dump.getvalue())):
            scale = float(row["scale"])
            if scale > 0:
                error = float(np.sqrt(float(row["mean_squared_error"])) / scale)
                errors[row["tensor_name"]] = max(error, errors.get(row["tensor_name"], 0.0))
        # Pass-through ops (pooling, reshape) share their input's scale and add no error of their own.
        return sorted(((n, e) for n, e in errors.items() if e > 1e-3), key=lambda p: -p[1])


def write_tflite_int8(model, parent: variant.VariantMeta, name: str, out_dir: Path, samples: np.ndarray,
                      gate: Gate, max_attempts: int, technique: str = "quantize",
                      params: dict[str, Any] | None = None) -> variant.VariantMeta:
    """A full-integer int8 TFLite variant of `model`, through the accuracy-aware fallback."""
    maker = TFLiteInt8(model, samples)
    full_params = {"mode": "full-int8", "io": "int8", "calibration_samples": len(samples),
                   "per_channel": "conv (dense per-tensor)", **(params or {})}

    def make(vdir: Path, float_layers: list[str]) -> variant.VariantMeta:
        return tflite_fmt.write_variant(maker.convert(float_layers), vdir, child_meta(
            parent, name, technique=technique, precision="int8", target="edge", params=dict(full_params)))

    return with_fallback(make, maker.rank, gate, out_dir, max_attempts,
                         "RMSE of the op's int8 output vs its float output, in quantization steps")


class _Reader:
    """ORT calibration reader over the calibration samples, in batches (a CalibrationDataReader by duck
    typing: ORT's base class accepts any object with get_next)."""

    def __init__(self, samples: np.ndarray, input_name: str, batch: int = 32):
        self._batches = iter([{input_name: samples[i:i + batch]} for i in range(0, len(samples), batch)])

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter(self.get_next, None)


class OrtInt8:
    """ORT static int8 QDQ (per-channel weights) of one preprocessed fp32 ONNX model."""

    def __init__(self, float_path: Path, samples: np.ndarray, workdir: Path, symmetric: bool):
        import onnx

        self.float_path, self.samples, self.symmetric = Path(float_path), samples, symmetric
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
                        extra_options=dict(TRT_EXTRA_OPTIONS) if self.symmetric else None)
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


def onnx_float(model, input_spec: variant.TensorSpec, opset: int, workdir: Path) -> Path:
    """fp32 ONNX from tf-keras, through quant_pre_process (shape inference + graph optimization)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw, pre = Path(workdir) / "float.onnx", Path(workdir) / "float_pre.onnx"
    onnx.save(onnx_fmt.from_keras(model, input_spec, opset), str(raw))
    quant_pre_process(str(raw), str(pre))
    return pre


def write_onnx_int8(float_path: Path, parent: variant.VariantMeta, name: str, out_dir: Path, samples: np.ndarray,
                    gate: Gate, max_attempts: int, workdir: Path, symmetric: bool) -> variant.VariantMeta:
    import onnx

    maker = OrtInt8(float_path, samples, workdir, symmetric)
    params = {"format": "QDQ", "per_channel": True, "activations": "int8", "weights": "int8",
              "calibration_samples": len(samples), "calibration": "MinMax", "preprocessed": "quant_pre_process"}
    if symmetric:
        params.update({"symmetric": True, "bias": "float"})

    def make(vdir: Path, float_layers: list[str]) -> variant.VariantMeta:
        meta = child_meta(parent, name, technique="quantize", precision="int8", target="gpu" if symmetric else "cpu",
                          params=dict(params), extra={"tensorrt_ready": True} if symmetric else {})
        return onnx_fmt.write_variant(onnx.load(str(maker.convert(float_layers))), vdir, meta)

    return with_fallback(make, maker.rank, gate, out_dir, max_attempts,
                         "drop in activation SQNR (dB) vs the fp32 model across the node")


def qat_model(model, ds: ds_mod.Dataset, epochs: int, seed: int = 1):
    """tfmot quantize_model + a short fine-tune on the training split."""
    import tensorflow_model_optimization as tfmot

    from kfopt.models.train import compile_model
    from kfopt.tfenv import keras

    keras().utils.set_random_seed(seed)
    try:
        qat = tfmot.quantization.keras.quantize_model(model)
    except (ValueError, RuntimeError, TypeError) as exc:  # tfmot refuses layers it cannot annotate
        raise ModelError(f"tfmot quantize_model cannot wrap this model: {str(exc).strip().splitlines()[0]}") from None
    compile_model(qat, ds.schema.task, QAT_LEARNING_RATE)
    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
    qat.fit(xt, yt, validation_data=(xv, yv), epochs=epochs, batch_size=FINE_TUNE_BATCH, shuffle=True, verbose=0)
    return qat


def qat_tflite(qat) -> bytes:
    """The QAT model as int8 TFLite with int8 input and output (ranges learned in training)."""
    t = tf()
    converter = tflite_fmt.converter(qat)
    converter.optimizations = [t.lite.Optimize.DEFAULT]
    converter.inference_input_type = t.int8
    converter.inference_output_type = t.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, enabled: bool = True, calibration_samples: int = 200,
        qat: bool = True, qat_epochs: int = 2, accuracy_budget: float = 0.5, min_agreement: float = 0.97,
        fallback_max_attempts: int = 3, opset: int = 17) -> dict[str, Any]:
    """Write the quantized variants of the baseline into out_dir (one folder per variant)."""
    checks.budget(accuracy_budget, min_agreement, fallback_max_attempts)
    if qat and qat_epochs < 1:
        raise ConfigError(f"qat_epochs must be at least 1, got {qat_epochs}.")
    parent = variant.read(baseline_dir)
    metrics: dict[str, Any] = {}
    with variant.staged_dir(Path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        if not enabled:
            write_skipped(tmp, VARIANTS, SWITCHED_OFF, "quantize", parent.name)
            return {"variants": 0}
        ds = ds_mod.read(dataset_dir)
        samples = calibration_set(ds, calibration_samples)
        metrics["calibration_samples"] = len(samples)
        model = savedmodel.load_keras(baseline_dir)
        gate = Gate.for_model(model, ds, accuracy_budget, min_agreement)
        cal = {"calibration_samples_requested": calibration_samples}

        def timed(name: str, make) -> None:
            start = time.perf_counter()
            meta = make(tmp / name)
            metrics[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
            if "fallback" in meta.extra:
                metrics[f"{name}_float_layers"] = len(meta.extra["fallback"]["float_layers"])
                metrics[f"{name}_gate_passed"] = meta.extra["fallback"]["passed"]

        timed("tflite_dynamic", lambda d: tflite_fmt.write_variant(tflite_dynamic(model), d, child_meta(
            parent, "tflite_dynamic", technique="quantize", precision="dynamic-int8", target="edge",
            params={"mode": "dynamic-range"})))
        timed("tflite_fp16", lambda d: tflite_fmt.write_variant(tflite_fp16(model), d, child_meta(
            parent, "tflite_fp16", technique="quantize", precision="fp16", target="edge", params={"mode": "float16"})))
        timed("tflite_int8", lambda d: write_tflite_int8(model, parent, "tflite_int8", d, samples, gate,
                                                         fallback_max_attempts, params=cal))
        float_onnx = onnx_float(model, parent.input, opset, Path(work))
        for name, symmetric in (("onnx_int8", False), ("onnx_int8_trt", True)):
            timed(name, lambda d, n=name, s=symmetric: write_onnx_int8(
                float_onnx, parent, n, d, samples, gate, fallback_max_attempts, Path(work), s))
        if qat:
            timed("tflite_qat_int8", lambda d: _write_qat(model, parent, ds, d, qat_epochs, gate))
        else:
            write_skipped(tmp, VARIANTS[-1:], SWITCHED_OFF, "qat", parent.name)
        metrics["variants"] = len(variant.discover(tmp))
    return metrics


def _write_qat(model, parent: variant.VariantMeta, ds: ds_mod.Dataset, out_dir: Path, epochs: int,
               gate: Gate) -> variant.VariantMeta:
    name = "tflite_qat_int8"
    try:
        trained = qat_model(model, ds, epochs)
    except ModelError as exc:  # a model QAT cannot handle still gets its other variants, and the reason
        return variant.write_skipped(out_dir, name, "tflite", "edge", str(exc), technique="qat", parent=parent.name)
    meta = tflite_fmt.write_variant(qat_tflite(trained), out_dir, child_meta(
        parent, name, technique="qat", precision="int8", target="edge",
        params={"mode": "quantization-aware training", "epochs": epochs, "learning_rate": QAT_LEARNING_RATE,
                "io": "int8"}))
    meta.extra["gate"] = gate.check(out_dir)  # recorded; QAT has no fallback (it already trained for int8)
    return variant.write(out_dir, meta)

