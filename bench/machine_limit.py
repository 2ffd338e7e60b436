"""How fast this core multiplies matrices through ONNX Runtime: the ceiling a model's rate is read against.

One large fully-connected layer, (M × K) · (K × N), in ONNX Runtime on one thread (the bench's
thread count), in each precision a kfopt variant computes in:
- fp32: `MatMul` on float32;
- int8: `MatMulInteger` (uint8 activations × int8 weights, int32 out: the bare integer GEMM) and
  `QLinearMatMul` (the same with uint8 out and the requantization a QOperator model pays); the int8
  limit is the faster of the two.
The weights are initializers, as in a model. One call does 2·M·N·K operations (a multiply and an add
per MAC); the rate is that over the p50 of `kfopt.bench.time_calls`, best of a few repeats (the
ceiling is what the core can reach, and other jobs on a shared machine only ever slow it down). The
bench measures it before and after its configs and keeps the faster of the two (`best`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def layer(kind: str, m: int, k: int, n: int):
    """The ONNX model of one (m × k) · (k × n) layer of `kind` (KINDS), its weights fixed random numbers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])]
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "b")]
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    else:
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])]
        weights = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "b")
        if kind == "int8_matmulinteger":
            inits = [weights, numpy_helper.from_array(np.array(128, np.uint8), "a_zp"),
                     numpy_helper.from_array(np.array(0, np.int8), "b_zp")]
            node = helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"])
            out = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        else:
            scalars = {"a_scale": np.float32(0.02), "a_zp": np.uint8(128), "b_scale": np.float32(0.01),
                       "b_zp": np.int8(0), "y_scale": np.float32(0.5), "y_zp": np.uint8(128)}
            inits = [weights] + [numpy_helper.from_array(np.array(v), key) for key, v in scalars.items()]
            node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp",
                                                      "y_scale", "y_zp"], ["y"])
            out = helper.make_tensor_value_info("y", TensorProto.UINT8, [m, n])
    graph = helper.make_graph([node], f"fc_{kind}", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


KINDS = ("fp32", "int8_matmulinteger", "int8_qlinearmatmul")


def measure(m: int = 256, k: int = 1024, n: int = 1024, *, threads: int = 1, repeats: int = 3,
            max_seconds: float = 1.0) -> dict[str, Any]:
    """ops/s of each kind and the limit per precision (`fp32`, `int8`), on `threads` ORT threads."""
    import onnxruntime as ort

    from kfopt.bench import time_calls

    rng = np.random.default_rng(1)
    feeds = {"fp32": rng.standard_normal((m, k)).astype(np.float32),
             "int8": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    ops = 2.0 * m * n * k
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(layer(kind, m, k, n).SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        feed = {"a": feeds["fp32" if kind == "fp32" else "int8"]}
        p50s = [time_calls(lambda: session.run(None, feed), warmup=3, min_runs=10, max_seconds=max_seconds,
                           target_ci=0.02)["p50_ms"] for _ in range(repeats)]
        kinds[kind] = {"p50_ms": min(p50s), "repeats_p50_ms": p50s, "ops_per_s": ops / (min(p50s) / 1e3)}
    limit = {"fp32": kinds["fp32"]["ops_per_s"],
             "int8": max(kinds[x]["ops_per_s"] for x in KINDS if x.startswith("int8"))}
    return {"shape": {"m": m, "k": k, "n": n}, "ops_per_call": ops, "threads": threads,
            "runtime": f"onnxruntime {ort.__version__}", "kinds": kinds, "limit_ops_per_s": limit}


def best(*runs: dict[str, Any]) -> dict[str, Any]:
    """One result from several `measure` runs of the same layers: each kind's fastest, and every run's limits."""
    kinds = {kind: max((r["kinds"][kind] for r in runs), key=lambda k: k["ops_per_s"]) for kind in KINDS}
    limit = {"fp32": kinds["fp32"]["ops_per_s"],
             "int8": max(kinds[x]["ops_per_s"] for x in KINDS if x.startswith("int8"))}
    return {**runs[0], "kinds": kinds, "limit_ops_per_s": limit, "runs": [r["limit_ops_per_s"] for r in runs]}


def precision_of(precision: str) -> str:
    """The limit a variant is read against: int8 for any int8 form (a dynamic-range model multiplies int8
    weights by activations quantized on the fly), else fp32 (LiteRT runs an fp16 model's weights as float32
    on a CPU without fp16 arithmetic)."""
    return "int8" if "int8" in precision else "fp32"
