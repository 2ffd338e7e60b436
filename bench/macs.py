"""Multiply-accumulates of one sample through an ONNX graph, counted from its nodes and inferred shapes.

Counted: the layers that carry a network's arithmetic, in float and quantized form —
Conv / ConvInteger / QLinearConv (N·Cout·Hout·Wout · Cin/group · kernel area), Gemm / QGemm and
MatMul / MatMulInteger / QLinearMatMul (the rows of A · K · the columns of the weight B; read from the
inputs' shapes, so a contrib op whose output ONNX cannot infer, QGemm, is still counted).
Everything else (activations, pooling, adds, quantize/dequantize) is left out: it is a few percent
of a CNN's work and not what a matrix-multiply ceiling measures. The count is the dense one: zero
weights of an unstructured-pruned model are still multiplied by the runtimes kfopt produces.

The graph's input batch dimension is fixed to 1 before ONNX shape inference, so the count is per
sample; a batch of B does B times as many.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# op type -> (index of the data input, index of the weight input)
CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1), "QGemm": (0, 3)}
GEMM = ("Gemm", "QGemm")


def _shapes(model) -> dict[str, list[int]]:
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name for i in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in inits:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes = {i.name: list(numpy_helper.to_array(i).shape) for i in model.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    return shapes


def _attr(node, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def count(model_or_path) -> dict[str, Any]:
    """{'macs': per sample, 'by_op': {op: macs}, 'nodes': counted, 'unknown': nodes whose shapes were not
    inferred (left out of the count, named so a low figure can be explained)}."""
    import onnx

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    shapes = _shapes(model)
    by_op: dict[str, int] = {}
    counted, unknown = 0, []
    for node in model.graph.node:
        if node.op_type not in CONV and node.op_type not in MATMUL:
            continue
        data_i, weight_i = (CONV if node.op_type in CONV else MATMUL)[node.op_type]
        a, w = shapes.get(node.input[data_i]), shapes.get(node.input[weight_i])
        y = shapes.get(node.output[0]) if node.op_type in CONV else []
        if a is None or w is None or y is None:
            unknown.append(node.name or node.op_type)
            continue
        if node.op_type in CONV:
            macs = int(np.prod(y)) * int(np.prod(w[1:]))  # each output element: Cin/group · kernel area MACs
        elif node.op_type in GEMM:
            m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
            macs = m * k * (w[0] if _attr(node, "transB", 0) else w[1])
        else:  # A (..., M, K) · B (..., K, N), the leading dimensions broadcast
            batch = np.broadcast_shapes(tuple(a[:-2]), tuple(w[:-2]))
            macs = int(np.prod(batch)) * (a[-2] if len(a) > 1 else 1) * a[-1] * w[-1]
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
        counted += 1
    return {"macs": sum(by_op.values()), "by_op": by_op, "nodes": counted, "unknown": unknown}


def op_counts(model_or_path) -> dict[str, int]:
    """Nodes per op type as stored: where two ONNX graphs of one network differ (an exporter's leftovers that
    a graph optimizer removes and that keep ONNX Runtime from fusing, for one) shows here."""
    import onnx

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
