"""PyTorch: a variant stored as a `torch.export` ExportedProgram (`model.pt2`) and its eager runner.

The `.pt2` holds the graph and the weights, no pickled Python: `torch.export.load` runs no code from
the file (unlike `torch.load` of a `.pt`). The runner executes the program's module op by op with
`torch.set_num_threads(threads)` under `torch.inference_mode()` — torch eager, the "as trained" row.

A program exported without a dynamic batch dimension accepts only the batch it was exported with:
`static_batch` finds it, the runner feeds every prediction in chunks of exactly that size (padding
the last one) and `accepted_batches` tells the benchmark to time only that batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kfopt import variant
from kfopt.errors import ModelError

FILENAME = "model.pt2"
EXAMPLE_BATCH = 2  # torch.export specializes sizes 0 and 1: trace with 2 so the batch stays symbolic


def export(module, feature_shape):
    """`module` (eval mode) as an ExportedProgram with a dynamic batch dimension."""
    import torch

    module.eval()
    example = torch.zeros(EXAMPLE_BATCH, *feature_shape)
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def save(program, variant_dir: Path) -> Path:
    import torch

    path = Path(variant_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def load_program(path: Path):
    """The ExportedProgram at `path`; a file torch.export cannot read is one ModelError."""
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for an unreadable archive
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} is not a readable torch.export program ({type(exc).__name__}: {first[:200]}); "
                         "save it with torch.export.save(torch.export.export(model.eval(), (example,)), "
                         "'model.pt2').") from None


def user_inputs(program) -> list:
    """The placeholder nodes of the program's user inputs (not its parameters or buffers)."""
    names = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]


def static_batch(program) -> int | None:
    """The batch size the program was fixed to at export, or None when its batch dimension is dynamic."""
    nodes = user_inputs(program)
    if not nodes:
        return None
    shape = getattr(nodes[0].meta.get("val"), "shape", None)
    return int(shape[0]) if shape is not None and len(shape) and isinstance(shape[0], int) else None


def run_module(module, x: np.ndarray, batch: int = 256, fixed: int | None = None, mode=None) -> np.ndarray:
    """`module`'s float32 outputs on `x` in batches (of exactly `fixed` rows, the last one padded), under
    `mode` (default torch.inference_mode)."""
    import torch

    x = np.ascontiguousarray(x, np.float32)
    step = fixed or batch
    outs = []
    with (mode or torch.inference_mode)():
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            n = len(chunk)
            if fixed and n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            out = module(torch.from_numpy(chunk))
            outs.append(out.float().numpy()[:n])
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


class TorchRunner:
    def __init__(self, variant_dir: Path, meta: variant.VariantMeta, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.meta = meta
        self.program = load_program(Path(variant_dir) / FILENAME)
        self._module = self.program.module()
        self.static_batch = static_batch(self.program)
        self.accepted_batches = None if self.static_batch is None else (self.static_batch,)
        self.runtime_config = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "batch": "dynamic" if self.static_batch is None else f"static {self.static_batch}"}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return run_module(self._module, x, batch=max(len(x), 1), fixed=self.static_batch)


def load(variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None) -> TorchRunner:
    return TorchRunner(variant_dir, meta, threads)
