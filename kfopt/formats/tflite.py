"""TFLite (LiteRT): float32 export here; int8/float16/dynamic variants come from kfopt.optimize.

The runner quantizes float input and dequantizes the output itself with the scale/zero point
recorded in kfopt.json, so callers always see float probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kfopt import variant

FILENAME = "model.tflite"


def converter(model):
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
    conv = converter(model)
    conv.optimizations = optimizations or []
    for key, value in converter_attrs.items():
        setattr(conv, key, value)
    return conv.convert()


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
