"""ONNX: writing an ONNX variant (from any adapter's export_onnx or a pass) and the ONNX Runtime runner.

Quantized ONNX variants (QDQ) keep float input and output, so one runner serves them all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kfopt import variant

FILENAME = "model.onnx"


def write_variant(proto, out_dir: Path, meta: variant.VariantMeta) -> variant.VariantMeta:
    import onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out / FILENAME))
    meta.input = variant.TensorSpec(proto.graph.input[0].name, meta.input.shape, "float32")
    meta.output = variant.TensorSpec(proto.graph.output[0].name, meta.output.shape, "float32")
    meta.format, meta.runtime = "onnx", "onnxruntime"
    return variant.write(out, meta)


class OnnxRunner:
    def __init__(self, variant_dir: Path, meta: variant.VariantMeta, threads: int | None,
                 providers: list[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.meta = meta
        self._session = ort.InferenceSession(str(Path(variant_dir) / FILENAME), options,
                                             providers=providers or ["CPUExecutionProvider"])
        first = self._session.get_inputs()[0]
        self._input = first.name
        # A graph exported with a fixed batch (an int, not a name, in its first dimension) runs only at
        # that batch: the benchmark times only it, and other sizes are fed in padded chunks of it.
        self.static_batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) else None
        self.accepted_batches = None if self.static_batch is None else (self.static_batch,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        fixed = self.static_batch
        if fixed is None or len(x) == fixed:
            return self._session.run(None, {self._input: x})[0]
        chunks = []
        for i in range(0, len(x), fixed):
            part = x[i:i + fixed]
            padded = np.concatenate([part, np.repeat(part[-1:], fixed - len(part), axis=0)]) if len(part) < fixed else part
            chunks.append(self._session.run(None, {self._input: padded})[0][:len(part)])
        return np.concatenate(chunks)


def load(variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None) -> OnnxRunner:
    return OnnxRunner(variant_dir, meta, threads)
