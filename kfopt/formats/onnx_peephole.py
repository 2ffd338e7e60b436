"""Peephole clean-up of an exported ONNX graph: what Olive's OnnxPeepholeOptimizer does, before anything else.

Converters leave work in the graph that ONNX Runtime's own session optimizer does not remove: tf2onnx
turns a Keras MobileNetV2 into 140 nodes with 21 Reshapes and 4 explicit Pads. onnxscript's optimizer
(constant folding, Pad folded into Conv) and onnxoptimizer's fuse-and-eliminate passes (no-op Reshapes
and Transposes, BatchNormalization into Conv, bias into Conv) make it 115 nodes; measured on that
model, 1 thread, ONNX Runtime 1.31: 125 µs → 96 µs at batch 1, 3.74 → 3.43 ms at batch 64, the same
as Olive's pick. Every ONNX variant kfopt makes starts from this graph, so the int8 search, OpenVINO
and TensorRT get it too.

A rewrite must not change the answers: the cleaned graph is run beside the original on a few seeded
inputs at batch 1 and 3 (a dynamic batch must stay dynamic) and kept only if its outputs match within
`ATOL`; otherwise, or if a rewriter raises, the original is kept and the record says why. The variant's
in-stage check and the benchmark's verification still judge whatever is kept.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

ATOL = 1e-4  # float32 re-association after folding; a real change of the function is far larger
RTOL = 1e-3
PROBE_BATCHES = (1, 3)


def _ops(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def _answers(proto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _probes(feature_shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (b, *feature_shape)).astype(np.float32) for b in PROBE_BATCHES]


def _rewrite(proto):
    import onnxoptimizer
    import onnxscript

    try:
        cleaned = onnxscript.optimizer.optimize(proto)
    except Exception as exc:  # noqa: BLE001 - shape inference the optimizer cannot do: retry without it
        if "TypeInference" not in str(exc) and "ShapeInference" not in str(exc):
            raise
        cleaned = onnxscript.optimizer.optimize(proto, onnx_shape_inference=False)
    return onnxoptimizer.optimize(cleaned)


def optimize(proto, feature_shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    """(graph to keep, record): the cleaned graph if it answers like `proto` on seeded probes, else `proto`."""
    before = _ops(proto)
    record: dict[str, Any] = {"tool": "onnxscript.optimizer + onnxoptimizer", "nodes_before": sum(before.values())}
    try:
        cleaned = _rewrite(proto)
        for x in _probes(tuple(feature_shape)):
            for a, b in zip(_answers(proto, x), _answers(cleaned, x), strict=True):
                if a.shape != b.shape or not np.allclose(a, b, atol=ATOL, rtol=RTOL):
                    diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
                    raise ValueError(f"answers changed at batch {len(x)} (max |Δ| {diff:.3g})")
    except Exception as exc:  # noqa: BLE001 - a rewrite that fails or changes answers is not applied
        return proto, {**record, "applied": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    after = _ops(cleaned)
    removed = {op: before[op] - after.get(op, 0) for op in sorted(before) if before[op] > after.get(op, 0)}
    return cleaned, {**record, "applied": True, "nodes_after": sum(after.values()), "removed": removed}
