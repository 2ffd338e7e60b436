"""A float32 ONNX graph converted to float16, for a strongly typed FP16 TensorRT engine.

Rules, per float tensor: graph inputs and outputs stay float32 (callers keep feeding float32);
ops in KEEP_FLOAT32 compute in float32 and everything else in float16; a Cast is inserted wherever
a tensor meets a consumer of the other precision. Initializers become float16 unless only
float32 ops read them. The result passes onnx.checker's full (type-strict) check, which is what a
strongly typed TensorRT network needs: it refuses mixed float16/float32 operands. Outputs of
custom-domain ops, whose types ONNX cannot infer, are left as they are: TensorRT's parser reports
those nodes.

Written here rather than taken from onnxconverter-common: its 1.16 release leaves a float16 graph
output behind when the last op is kept in float32 (e.g. Softmax), despite keep_io_types.
"""

from __future__ import annotations

import numpy as np

from kfopt.errors import ModelError

# Kept in float32: exponentials, logarithms, powers and roots overflow or lose range in float16;
# reductions and normalizations accumulate error; Sigmoid saturates near 1 (binary probabilities).
# Resize/Upsample: the ONNX spec fixes their scales input to float32.
KEEP_FLOAT32 = ("Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Sigmoid", "Erf",
                "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceLogSumExp", "ReduceL2", "ReduceProd",
                "LayerNormalization", "InstanceNormalization", "Resize", "Upsample")
_QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_FP16_MAX = float(np.finfo(np.float16).max)


def _tensor_to_fp16(tensor):
    from onnx import numpy_helper

    arr = numpy_helper.to_array(tensor)
    out = numpy_helper.from_array(np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16), tensor.name)
    return out, int(np.count_nonzero(np.abs(arr) > _FP16_MAX))


def _elem_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def convert(model, keep_float32: tuple[str, ...] = KEEP_FLOAT32) -> tuple[object, dict]:
    """Return (float16 ModelProto, summary) for a float32 ModelProto; the input is not modified."""
    import onnx
    from onnx import TensorProto, helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for node in g.node:
        if node.op_type in _QDQ:
            raise ModelError(f"Graph {g.name!r} is already quantized (node {node.name!r}, {node.op_type}); "
                             "FP16 conversion takes a float32 graph.")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ModelError(f"FP16 conversion does not handle control flow (node {node.name!r}, {node.op_type}).")
    types = _elem_types(model)
    for node in g.node:
        for out in node.output:
            if out and out not in types and node.domain in ("", "ai.onnx"):
                raise ModelError(f"FP16 conversion cannot infer the type of {out!r} (node {node.name!r}, {node.op_type}).")

    def kept(node) -> bool:
        return node.op_type in keep_float32

    # Precision each float tensor has after conversion.
    precision: dict[str, int] = {i.name: FLOAT for i in g.input if types.get(i.name) == FLOAT}
    half_readers = {name for node in g.node if not kept(node) for name in node.input}
    clipped = 0
    for i, init in enumerate(g.initializer):
        if init.data_type == FLOAT and init.name in half_readers:
            new, n = _tensor_to_fp16(init)
            g.initializer[i].CopyFrom(new)
            clipped += n
            precision[init.name] = HALF
        elif init.data_type == FLOAT:
            precision[init.name] = FLOAT
    for inp in g.input:  # IR < 4 lists initializers among the inputs: keep the declared type in step
        if precision.get(inp.name) == HALF:
            inp.type.tensor_type.elem_type = HALF
    for node in g.node:
        for out in node.output:
            if types.get(out) == FLOAT:
                precision[out] = FLOAT if kept(node) else HALF
        if kept(node):
            continue
        for attr in node.attribute:
            if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == FLOAT:
                attr.i = HALF
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                new, n = _tensor_to_fp16(attr.t)
                attr.t.CopyFrom(new)
                clipped += n
            elif attr.name == "value_float" and node.op_type == "Constant":
                attr.CopyFrom(helper.make_attribute("value", helper.make_tensor("", HALF, [], [attr.f])))
            elif attr.name == "value_floats" and node.op_type == "Constant":
                attr.CopyFrom(helper.make_attribute("value", helper.make_tensor("", HALF, [len(attr.floats)], attr.floats)))

    casts: dict[tuple[str, int], str] = {}
    nodes = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], name=f"{casts[key]}_cast", to=to))
        return casts[key]

    for node in g.node:
        want = FLOAT if kept(node) else HALF
        for i, name in enumerate(node.input):
            if name in precision and precision[name] != want:
                node.input[i] = cast(name, want)
        nodes.append(node)
    for out in g.output:
        if precision.get(out.name) == HALF:  # computed in float16: rename it, cast back under the output's name
            internal = f"{out.name}__fp16"
            for node in nodes:
                node.input[:] = [internal if n == out.name else n for n in node.input]
                node.output[:] = [internal if n == out.name else n for n in node.output]
            nodes.append(helper.make_node("Cast", [internal], [out.name], name=f"{out.name}_cast", to=FLOAT))
    inserted = len(nodes) - len(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale float32 annotations; types follow from the graph
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"The float16 graph does not type-check ({exc}); keep more ops in float32.") from None
    summary = {"kept_float32_ops": sorted({n.op_type for n in g.node if kept(n)}),
               "casts_inserted": inserted,
               "values_clipped_to_fp16_range": clipped}
    return model, summary
