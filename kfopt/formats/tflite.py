"""TFLite (LiteRT): conversions of a tf-keras model (float32, dynamic-range, float16, full-integer int8 with
selective quantization, QAT int8) and the LiteRT runner. The passes decide which to make and check them.

The runner quantizes float input and dequantizes the output itself with the scale/zero point
recorded in kfopt.json, so callers always see float probabilities.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from kfopt import variant

FILENAME = "model.tflite"
DEBUG_SAMPLES = 64  # samples the per-layer error analysis runs on (it runs only when int8 misses its check)


def converter_for(model):
    """A TFLiteConverter for a tf-keras model, from one traced function with a dynamic batch.

    from_keras_model (or passing the model as the functions' trackable object) first saves the whole
    Keras object as a SavedModel, tracing every layer's call: seconds for a small CNN, ~15 s for a
    MobileNetV2 on two cores, on every conversion. A lone concrete function is frozen instead.
    """
    from kfopt.tfenv import tf

    t = tf()
    spec = t.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    function = t.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return t.lite.TFLiteConverter.from_concrete_functions([function])


def convert(model, optimizations: list | None = None, **converter_attrs) -> bytes:
    """Convert a tf-keras model; extra attributes are set on the TFLiteConverter as given."""
    conv = converter_for(model)
    conv.optimizations = optimizations or []
    for key, value in converter_attrs.items():
        setattr(conv, key, value)
    return conv.convert()


def dynamic_range(model) -> bytes:
    """Dynamic-range quantization: int8 weights, activations quantized on the fly."""
    from kfopt.tfenv import tf

    return convert(model, [tf().lite.Optimize.DEFAULT])


def float16(model) -> bytes:
    """float16 weights, float32 input and output."""
    from kfopt.tfenv import tf

    converter = converter_for(model)
    converter.optimizations = [tf().lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf().float16]
    return converter.convert()


class Int8Converter:
    """Full-integer int8 TFLite (int8 input and output) of one model, with selective quantization.

    Convolutions get per-channel weight scales; dense layers per-tensor (the classic TFLite int8 FC
    scheme): per-channel dense costs 24 bytes of scale/zero point per output unit, ~10% of a small
    model's file, for no accuracy gain measured here.
    """

    def __init__(self, model, samples: np.ndarray):
        self.model, self.samples = model, samples
        self._debugger = None

    def converter(self):
        from kfopt.tfenv import tf

        t = tf()
        converter = converter_for(self.model)
        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s[None]] for s in self.samples)
        converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = t.int8
        converter.inference_output_type = t.int8
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        return converter

    def convert(self, float_layers: list[str]) -> bytes:
        from kfopt.tfenv import tf

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
        from kfopt.tfenv import tf

        if self._debugger is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the debugger runs the deprecated tf.lite.Interpreter
                self._debugger = tf().lite.experimental.QuantizationDebugger(
                    converter=self.converter(),
                    debug_dataset=lambda: ([s[None]] for s in self.samples[:DEBUG_SAMPLES]))
        return self._debugger

    def rank(self) -> list[tuple[str, float]]:
        """Ops worst first by RMSE(int8 output - float output) / quantization step of the output."""
        from kfopt.tfenv import tf

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


def from_qat(qat) -> bytes:
    """A quantization-aware-trained model as int8 TFLite with int8 input and output (ranges learned in training)."""
    from kfopt.tfenv import tf

    t = tf()
    converter = converter_for(qat)
    converter.optimizations = [t.lite.Optimize.DEFAULT]
    converter.inference_input_type = t.int8
    converter.inference_output_type = t.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def io_specs(model_bytes: bytes, base_in: variant.TensorSpec, base_out: variant.TensorSpec):
    """Input/output specs of a converted model, with int8 quantization parameters if any."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    specs = []
    for detail, base in ((interp.get_input_details()[0], base_in), (interp.get_output_details()[0], base_out)):
        scale, zero = detail["quantization"]
        dtype = np.dtype(detail["dtype"]).name
        quantized = dtype in ("int8", "uint8") and scale != 0
        specs.append(variant.TensorSpec(base.name, base.shape, dtype, float(scale) if quantized else None,
                                        int(zero) if quantized else None))
    return specs[0], specs[1]


def write_variant(model_bytes: bytes, out_dir: Path, meta: variant.VariantMeta) -> variant.VariantMeta:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / FILENAME).write_bytes(model_bytes)
    meta.input, meta.output = io_specs(model_bytes, meta.input, meta.output)
    meta.format, meta.runtime = "tflite", "litert"
    return variant.write(out, meta)


class TFLiteRunner:
    def __init__(self, variant_dir: Path, meta: variant.VariantMeta, threads: int | None):
        from ai_edge_litert.interpreter import Interpreter

        self.meta = meta
        self._interp = Interpreter(model_path=str(Path(variant_dir) / FILENAME), num_threads=threads or None)
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self._batch = None

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        spec = self.meta.input
        if spec.scale is None:
            return x.astype(self._in["dtype"])
        info = np.iinfo(spec.dtype)
        return np.clip(np.round(x / spec.scale + spec.zero_point), info.min, info.max).astype(spec.dtype)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._batch != len(x):
            self._interp.resize_tensor_input(self._in["index"], [len(x), *self._in["shape"][1:]])
            self._interp.allocate_tensors()
            self._batch = len(x)
        self._interp.set_tensor(self._in["index"], self._quantize(np.asarray(x, np.float32)))
        self._interp.invoke()
        out = self._interp.get_tensor(self._out["index"])
        spec = self.meta.output
        if spec.scale is not None:
            return (out.astype(np.float32) - spec.zero_point) * spec.scale
        return out.astype(np.float32)


def load(variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None) -> TFLiteRunner:
    return TFLiteRunner(variant_dir, meta, threads)
