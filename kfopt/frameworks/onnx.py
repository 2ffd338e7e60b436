"""The ONNX adapter: a `.onnx` model the user brings, from any framework.

An ONNX graph carries no training code, so no technique that needs the source framework (fine-tuning,
pruning, distillation, QAT) runs on it: CAPABILITIES is empty and those stages skip it with that
reason. Everything that works on ONNX does: the baseline is the graph itself (format "onnx", run by
ONNX Runtime) and every ONNX pass (ORT int8, OpenVINO, TensorRT) takes it.

`load_user` checks the graph (onnx.checker) and its one input and one output against the Dataset
artifact: a static rank, the feature shape, a float input, one output unit per class. A graph that
ends in logits gets a Softmax (Sigmoid for a binary task) appended so that runners return probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.formats import onnx as onnx_fmt
from kfopt.models import brought

NAME = "onnx"
CAPABILITIES: frozenset[str] = frozenset()
SUFFIXES = (".onnx",)
FORMAT, RUNTIME = "onnx", "onnxruntime"
PROBABILITY_OPS = ("Softmax", "Sigmoid", "LogSoftmax")
FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def accepts(path: Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix in SUFFIXES


def _invalid(path: Path, exc: Exception) -> ModelError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {first[:200]}); export it "
                      "again (torch.onnx.export, tf2onnx, skl2onnx, ...).")


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises many types
        raise _invalid(path, exc) from None


def _check(model, path: Path) -> None:
    """onnx.checker, after kfopt's own checks (which name the problem more plainly)."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - the checker raises many types
        raise _invalid(path, exc) from None


def _graph_inputs(model) -> list:
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _dims(value_info) -> list[int | str] | None:
    """The tensor's dims (int, or the symbolic name), or None when its rank is not fixed."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def check_against(model, schema: ds_mod.Schema) -> dict[str, Any]:
    """Check the graph's input and output against the data; returns the input check for kfopt.json."""
    inputs, outputs = _graph_inputs(model), list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"The ONNX model has {len(inputs)} inputs and {len(outputs)} outputs; kfopt optimizes "
                         "single-input, single-output classifiers: export the model with one input and one output.")
    dims = _dims(inputs[0])
    if dims is None:
        raise ModelError(f"The ONNX model's input {inputs[0].name!r} has no fixed rank (a dynamic rank); kfopt needs "
                         "the input shape: export it with a shape such as (batch, *features), only the batch dynamic.")
    want = list(schema.feature_shape)
    if len(dims) != len(want) + 1 or any(isinstance(d, int) and d and d != w for d, w in zip(dims[1:], want)):
        raise ModelError(f"The ONNX model expects input of shape {tuple(dims)} (batch first) but the dataset's "
                         f"features have shape {tuple(want)}; give data shaped like the model's input, or export "
                         "the model for this data.")
    elem = inputs[0].type.tensor_type.elem_type
    if elem not in FLOAT_TYPES:
        import onnx

        raise ModelError(f"The ONNX model's input type is {onnx.TensorProto.DataType.Name(elem)}; kfopt feeds "
                         "float32 features, so the model must take a float input.")
    out = _dims(outputs[0])
    expected = 1 if schema.task == "binary" else schema.num_classes
    if out is None or len(out) != 2 or (isinstance(out[-1], int) and out[-1] and out[-1] != expected):
        what = "1 sigmoid unit for a binary task" if schema.task == "binary" else f"{expected} units, one per class"
        raise ModelError(f"The ONNX model's output has shape {tuple(out) if out else 'of no fixed rank'} but the data "
                         f"has {schema.num_classes} classes (expected {what}, shape (batch, {expected})); give a "
                         "model trained for these classes.")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] else None
    return {"shape": [batch, *want], "dtype": "float32", "static_batch": batch,
            "data_normalization": schema.normalization.get("method", "none")}


def _with_head(model, task: str):
    """The graph with Softmax over the last axis (Sigmoid for a binary task) after its output."""
    import onnx

    out = model.graph.output[0]
    raw = f"{out.name}_logits"
    for node in model.graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    op = "Sigmoid" if task == "binary" else "Softmax"
    attrs = {} if op == "Sigmoid" else {"axis": -1}
    model.graph.node.append(onnx.helper.make_node(op, [raw], [out.name], name="kfopt_probabilities", **attrs))
    return model


def _ends_in_probabilities(model) -> bool:
    out = model.graph.output[0].name
    return any(node.op_type in PROBABILITY_OPS and out in node.output for node in model.graph.node)


def load_user(path: Path, schema: ds_mod.Schema) -> tuple[Any, dict[str, Any]]:
    model = _load(Path(path))
    spec = check_against(model, schema)
    _check(model, Path(path))
    appended = None
    if not _ends_in_probabilities(model):
        appended = "sigmoid" if schema.task == "binary" else "softmax"
        model = _with_head(model, schema.task)
    if spec["static_batch"]:
        brought.warn("train", f"the ONNX model has a static batch of {spec['static_batch']}: it runs only at that "
                     "batch; export it with a dynamic batch axis (torch.onnx.export(..., dynamic_shapes=...), "
                     "tf2onnx with a None batch) to serve any batch.")
    parameters = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    return model, {"architecture": Path(path).stem, "parameters": parameters, "input_check": spec,
                   "appended_output_activation": appended}


def save(model, variant_dir: Path) -> Path:
    import onnx

    path = Path(variant_dir) / onnx_fmt.FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def load(variant_dir: Path):
    import onnx

    return onnx.load(str(Path(variant_dir) / onnx_fmt.FILENAME))


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """float32 probabilities from ONNX Runtime, in batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x, np.float32)
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def fine_tune(model, ds: ds_mod.Dataset, **_: Any) -> dict[str, list[float]]:
    raise ModelError("An ONNX model cannot be fine-tuned: it carries no training code. Bring the source "
                     "framework's model (.keras or .pt2) for techniques that retrain.")


def export_onnx(model, input_spec: variant.TensorSpec, opset: int = 17):
    """The model is ONNX already: itself (its opset is kept; converting it could change its numbers)."""
    return model


def io_specs(schema: ds_mod.Schema) -> tuple[variant.TensorSpec, variant.TensorSpec]:
    out_units = 1 if schema.task == "binary" else schema.num_classes
    return (variant.TensorSpec("input", [None, *schema.feature_shape], "float32"),
            variant.TensorSpec("output", [None, out_units], "float32"))
