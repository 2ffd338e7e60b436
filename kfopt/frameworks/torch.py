"""The torch adapter: the one module that handles a PyTorch baseline (kfopt's own or a user's `.pt2`).

A model the user brings is a `torch.export` ExportedProgram saved as `.pt2`, loaded with
`torch.export.load` only: no pickle, no code from the file. A `.pt`/`.pth` (a pickle: `torch.load`
of one can run code) is refused with the command that saves a `.pt2`. The program is checked against
the Dataset artifact (one user input and output, input rank and shape, float input, output width)
with one clear error per mismatch, and made to end in probabilities.

kfopt's own torch models (kfopt.models.torch_architectures) are nn.Modules: their variant stores
the same `.pt2` (kfopt.formats.torch), and `load` rebuilds the module from the architecture named
in kfopt.json with the program's weights, so techniques that need the Python model (fine-tuning,
structured pruning, distillation) get it. A brought program has no Python code: `capabilities`
gives it only what works on the exported graph, and the other techniques are skipped with that reason.

A program exported with a static batch runs only at that batch (kfopt.formats.torch.static_batch):
the runner times only that batch, and the ONNX export says how to export with a dynamic batch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.formats import torch as torch_fmt
from kfopt.models import brought

NAME = "torch"
#: what kfopt's own torch models (nn.Modules with their Python code) support; see `capabilities`
CAPABILITIES = frozenset({"fine_tune", "prune", "distill"})
SUFFIXES = (".pt2",)
PICKLE_SUFFIXES = (".pt", ".pth")
FORMAT, RUNTIME = "torch", "torch"
ONNX_MIN_OPSET = 18  # the dynamo exporter's own ops start at 18; lower opsets go through a lossy converter
ONNX_TOLERANCE = 1e-4  # max abs difference of probabilities, ONNX Runtime vs eager torch
SAVE_HINT = ("save the model with torch.export.save(torch.export.export(model.eval(), (example,), "
             "dynamic_shapes=({0: torch.export.Dim('batch')},)), 'model.pt2')")
PROBABILITY_OPS = ("aten._softmax", "aten.softmax", "aten.sigmoid", "aten._log_softmax")
#: why a torch model gets no XLA/TPU program here (checked 2026-12 with the pinned torch 2.13.0)
NO_XLA = ("torch 2.13 has no path to an XLA/StableHLO program here: torch.export has no StableHLO lowering of its "
          "own, and torch_xla (torch_xla.stablehlo), the converter that has one, is at 2.9.0 on PyPI and requires "
          "torch 2.9, not the pinned 2.13; no TPU program is made rather than one kfopt could not verify")


def capabilities(meta: variant.VariantMeta) -> frozenset[str]:
    """kfopt's own module (built from an architecture kfopt knows): CAPABILITIES; a brought program: none,
    since pruning, distillation and fine-tuning here need the model's Python code (`train()` of an exported
    module is not supported by torch 2.13)."""
    from kfopt.models.torch_architectures import TORCH_ARCHITECTURES

    own = meta.technique != "provided" and meta.params.get("architecture") in TORCH_ARCHITECTURES
    return CAPABILITIES if own else frozenset()


def accepts(path: Path) -> bool:
    """A `.pt2` file, or a `.pt`/`.pth` torch pickle (which load_user refuses with the fix)."""
    path = Path(path)
    return path.is_file() and path.suffix in SUFFIXES + PICKLE_SUFFIXES


def _op_name(node) -> str:
    return str(node.target)  # an OpOverload prints as "aten.softmax.int"


def _ends_in_probabilities(program) -> bool:
    output = next(n for n in program.graph.nodes if n.op == "output")
    last = output.args[0][0] if isinstance(output.args[0], (list, tuple)) else output.args[0]
    return getattr(last, "op", "") == "call_function" and _op_name(last).startswith(PROBABILITY_OPS)


def check_against(program, schema: ds_mod.Schema) -> dict[str, Any]:
    """Check the program's inputs and outputs against the data; returns the input check for kfopt.json."""
    inputs = torch_fmt.user_inputs(program)
    outputs = program.graph_signature.user_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"The torch program has {len(inputs)} inputs and {len(outputs)} outputs; kfopt optimizes "
                         "single-input, single-output classifiers: export a module whose forward takes one tensor "
                         "and returns one.")
    val = inputs[0].meta.get("val")
    shape = [s if isinstance(s, int) else None for s in val.shape]
    want = list(schema.feature_shape)
    if len(shape) != len(want) + 1 or any(s is not None and s != w for s, w in zip(shape[1:], want)):
        raise ModelError(f"The torch program expects input of shape {tuple(shape)} (batch first) but the dataset's "
                         f"features have shape {tuple(want)}; give data shaped like the model's input (kfopt feeds "
                         "the features as stored, images as NHWC), or export the model for this data.")
    if not val.dtype.is_floating_point:
        raise ModelError(f"The torch program's input dtype is {val.dtype}; kfopt feeds float32 features, so the "
                         "model must take a float input.")
    out_val = next(n for n in program.graph.nodes if n.op == "output").args[0][0].meta.get("val")
    units = int(out_val.shape[-1]) if out_val is not None and len(out_val.shape) == 2 else None
    expected = 1 if schema.task == "binary" else schema.num_classes
    if units != expected:
        what = "1 sigmoid unit for a binary task" if schema.task == "binary" else f"{expected} units, one per class"
        got = f"{units} output units" if units is not None else f"an output of shape {tuple(out_val.shape)}"
        raise ModelError(f"The torch program has {got} but the data has {schema.num_classes} classes (expected "
                         f"{what}, shape (batch, {expected})); give a model trained for these classes.")
    batch = torch_fmt.static_batch(program)
    return {"shape": [batch, *want], "dtype": str(val.dtype).replace("torch.", ""),
            "static_batch": batch, "data_normalization": schema.normalization.get("method", "none")}


def _with_head(program, task: str, batch: int | None):
    """The program followed by softmax (sigmoid for a binary task), exported again as one program."""
    import torch

    class Head(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = self.inner(x)
            return torch.sigmoid(z) if task == "binary" else torch.softmax(z, dim=-1)

    shape = [s if isinstance(s, int) else torch_fmt.EXAMPLE_BATCH
             for s in torch_fmt.user_inputs(program)[0].meta["val"].shape]
    example = torch.zeros(*shape)
    dynamic = None if batch else ({0: torch.export.Dim("batch", min=1)},)
    return torch.export.export(Head(program.module()), (example,), dynamic_shapes=dynamic)


def load_user(path: Path, schema: ds_mod.Schema) -> tuple[Any, dict[str, Any]]:
    """The user's `.pt2`, loaded safely, checked against the data and ending in probabilities; and the notes
    for the baseline's kfopt.json."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ModelError(f"{path} is a torch pickle ({path.suffix}); kfopt does not load pickles, which can run "
                         f"code when loaded. Export the model and pass the .pt2 instead: {SAVE_HINT}.")
    program = torch_fmt.load_program(path)
    spec = check_against(program, schema)
    appended = None
    if not _ends_in_probabilities(program):
        appended = "sigmoid" if schema.task == "binary" else "softmax"
        program = _with_head(program, schema.task, spec["static_batch"])
    if spec["static_batch"]:
        brought.warn("train", f"the torch program was exported with a static batch of {spec['static_batch']}: it "
                     f"runs only at that batch, so only batch {spec['static_batch']} is timed; to serve any batch, "
                     f"{SAVE_HINT}.")
    parameters = sum(int(p.numel()) for p in program.parameters())
    return program, {"architecture": path.stem, "parameters": parameters, "input_check": spec,
                     "appended_output_activation": appended}


def save(model, variant_dir: Path) -> Path:
    """A variant's `.pt2`: an ExportedProgram as it is, a kfopt module exported with a dynamic batch."""
    program = model if _is_program(model) else torch_fmt.export(model, model.feature_shape)
    return torch_fmt.save(program, variant_dir)


def load(variant_dir: Path):
    """kfopt's own module rebuilt (architecture from kfopt.json, weights from the `.pt2`); else the program."""
    from kfopt.models import torch_architectures

    meta = variant.read(variant_dir)
    program = torch_fmt.load_program(Path(variant_dir) / torch_fmt.FILENAME)
    if "fine_tune" not in capabilities(meta):
        return program
    shape, units = meta.input.shape[1:], meta.output.shape[-1]
    num_classes = 2 if meta.task == "binary" else units
    module = torch_architectures.build(meta.params["architecture"], shape, num_classes,
                                       float(meta.params.get("width", 1.0)))
    module.load_state_dict(program.state_dict)
    return module.eval()


def _is_program(model) -> bool:
    import torch

    return isinstance(model, torch.export.ExportedProgram)


def _module(model):
    return model.module() if _is_program(model) else model.eval()


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """float32 probabilities in batches under torch.inference_mode (a static-batch program at its batch)."""
    fixed = torch_fmt.static_batch(model) if _is_program(model) else None
    return torch_fmt.run_module(_module(model), x, batch=batch, fixed=fixed)


def _loss_fn(model, task: str):
    """The loss on logits (kfopt's modules expose them); cross-entropy on log-probabilities otherwise."""
    import torch
    import torch.nn.functional as F

    if hasattr(model, "logits"):
        if task == "binary":
            return lambda x, y: F.binary_cross_entropy_with_logits(model.logits(x).squeeze(-1), y.float())
        return lambda x, y: F.cross_entropy(model.logits(x), y)

    def from_probs(x, y):
        p = model(x).clamp(1e-7, 1 - 1e-7)
        if task == "binary":
            return F.binary_cross_entropy(p.squeeze(-1), y.float())
        return F.nll_loss(torch.log(p), y)

    return from_probs


def _evaluate(model, loss_fn, x: np.ndarray, y: np.ndarray, task: str) -> tuple[float, float]:
    import torch

    from kfopt import verify

    model.eval()
    with torch.inference_mode():
        loss = float(loss_fn(torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y)))
    probs = torch_fmt.run_module(model, x)
    return loss, float(verify.quality(probs, y, task)["accuracy"])


def fine_tune(model, ds: ds_mod.Dataset, *, epochs: int, learning_rate: float, batch_size: int, seed: int,
              patience: int = 0, mixed_precision: str = "none", callbacks: list | None = None
              ) -> dict[str, list[float]]:
    """Train kfopt's module in place with Adam on the training split; return Keras-style curves.

    With `patience`, validation loss is watched: training stops after `patience` epochs without a new
    best and the best weights are restored (training a baseline). `mixed_precision`: mixed_bfloat16
    (bf16 autocast; measured slower than fp32 for these models on this CPU, see bench/train_bench.py) or mixed_float16 (fp16 autocast, for a GPU). `callbacks` are
    Keras-only (tfmot) and refused here.
    """
    import torch

    if callbacks:
        raise ModelError("Keras callbacks cannot drive a torch fine-tune.")
    if _is_program(model) or not hasattr(model, "parameters"):
        raise ModelError("A brought torch.export program cannot be fine-tuned here (torch does not support "
                         "train() on an exported module); only kfopt's own torch models are fine-tuned.")
    torch.manual_seed(seed)
    task = ds.schema.task
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(mixed_precision)
    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
    x_t, y_t = torch.from_numpy(np.ascontiguousarray(xt, np.float32)), torch.from_numpy(yt.astype(np.int64))
    loss_fn = _loss_fn(model, task)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best, best_state, waited = float("inf"), None, 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_t), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            optimizer.zero_grad()
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(x_t[idx], y_t[idx])
            loss.backward()
            optimizer.step()
        for prefix, (x, y) in (("", (xt, yt)), ("val_", (xv, yv))):
            loss_value, acc = _evaluate(model, loss_fn, x, y.astype(np.int64), task)
            history[f"{prefix}loss"].append(loss_value)
            history[f"{prefix}accuracy"].append(acc)
        if patience:
            if history["val_loss"][-1] < best - 1e-7:
                best, best_state, waited = history["val_loss"][-1], copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if waited >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def _program(model, input_spec: variant.TensorSpec):
    if _is_program(model):
        return model
    return torch_fmt.export(model, getattr(model, "feature_shape", input_spec.shape[1:]))


def export_onnx(model, input_spec: variant.TensorSpec, opset: int = 17):
    """`torch.onnx.export(..., dynamo=True, external_data=False)` with a dynamic batch axis, checked against
    eager torch through ONNX Runtime (max abs error recorded in the model's metadata_props)."""
    import onnx
    import torch

    program = _program(model, input_spec)
    batch = torch_fmt.static_batch(program)
    if batch:
        raise ModelError(f"The torch program was exported with a static batch of {batch}, so its ONNX could serve "
                         f"only that batch; to get ONNX, OpenVINO and TensorRT variants, {SAVE_HINT}.")
    opset = max(int(opset), ONNX_MIN_OPSET)
    try:
        exported = torch.onnx.export(program, dynamo=True, external_data=False, opset_version=opset,
                                     input_names=[input_spec.name], output_names=["output"], verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types for an op it cannot translate
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"torch.onnx.export (dynamo) could not export this model: {first[:300]}") from None
    proto = exported.model_proto
    error = _check_onnx(proto, program, input_spec)
    onnx.helper.set_model_props(proto, {"kfopt_check": f"max abs error vs eager torch {error:.3g} on 3 random "
                                                       f"inputs; opset {opset}"})
    return proto


def _check_onnx(proto, program, input_spec: variant.TensorSpec) -> float:
    """Max abs difference between ONNX Runtime and eager torch on random inputs of batch 3 (not the traced 2)."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, *input_spec.shape[1:])).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    want = torch_fmt.run_module(program.module(), x)
    error = float(np.abs(got.reshape(want.shape) - want).max())
    if not error <= ONNX_TOLERANCE:
        raise ModelError(f"The ONNX export differs from eager torch by {error:.3g} (more than {ONNX_TOLERANCE}); "
                         "the exporter mistranslated an op of this model.")
    return error


def io_specs(schema: ds_mod.Schema) -> tuple[variant.TensorSpec, variant.TensorSpec]:
    """The baseline's input (features, dynamic batch) and output (one unit per class; one for binary)."""
    out_units = 1 if schema.task == "binary" else schema.num_classes
    return (variant.TensorSpec("input", [None, *schema.feature_shape], "float32"),
            variant.TensorSpec("output", [None, out_units], "float32"))
