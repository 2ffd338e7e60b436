"""Data-parallel training of kfopt's torch architectures: one process per worker, DistributedDataParallel.

This module is both sides of `train.workers > 1` for `model.framework: torch`:

- `launch()` (the train stage, in its own process) starts the workers through torch's own launcher,
  `python -m torch.distributed.run --standalone --nproc_per_node N -m kfopt.models.torch_ddp ...`, and
  turns a failed worker into one KfoptError quoting that worker's log tail;
- `main()` is the worker entry point, also what a Kubeflow Trainer `TrainJob` on the `torch-distributed`
  runtime runs on each node (kfopt.trainjob). It reads the dataset artifact (a folder or gs:// URI),
  trains with the same Adam, early stopping and best-weight restore as the one-process adapter
  (kfopt.frameworks.torch.fine_tune), and rank 0 writes the baseline through `write_baseline` (to a
  folder or a gs:// URI) plus a metrics JSON.

`batch_size` is the global batch. Every rank draws the same per-epoch permutation as one process
(`global_batches`) and takes its contiguous part of each global batch (`shard`); DDP averages the
gradients, so N workers make the same updates as one process up to float summation order. (Not
DistributedSampler: its per-epoch reseeding and interleaved split give other batches than one
process draws.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

from kfopt.errors import ConfigError, KfoptError, ModelError
from kfopt.models.workers import check_workers, parser, worker_args

LOG_TAIL_LINES = 20


def rendezvous(env: Mapping[str, str]) -> dict[str, Any]:
    """Rank, world size, local rank and master address from the environment.

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. A TrainJob whose command runs this
    module directly (one process per node) gets only Trainer's PET_NNODES/PET_NODE_RANK/PET_MASTER_ADDR/
    PET_MASTER_PORT, which then stand for the same. Neither set: one process, world size 1.
    """
    if "WORLD_SIZE" in env:
        return {"rank": int(env.get("RANK", 0)), "world_size": int(env["WORLD_SIZE"]),
                "local_rank": int(env.get("LOCAL_RANK", 0)), "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
                "master_port": int(env.get("MASTER_PORT", 29500))}
    if "PET_NNODES" in env:
        return {"rank": int(env.get("PET_NODE_RANK", 0)), "world_size": int(env["PET_NNODES"]), "local_rank": 0,
                "master_addr": env.get("PET_MASTER_ADDR", "127.0.0.1"),
                "master_port": int(env.get("PET_MASTER_PORT", 29500))}
    return {"rank": 0, "world_size": 1, "local_rank": 0, "master_addr": "127.0.0.1", "master_port": 29500}


def launch(dataset_dir: Path, out_dir: Path, *, workers: int, timeout_s: float | None = None,
           **train: Any) -> dict[str, Any]:
    """Train with `workers` local processes through torch.distributed.run; rank 0 writes the baseline."""
    check_workers(workers, train["batch_size"])
    with tempfile.TemporaryDirectory(prefix="kfopt-ddp-") as tmp:
        metrics = Path(tmp) / "metrics.json"
        logs = Path(tmp) / "logs"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(workers),
               "--log_dir", str(logs), "--redirects", "3", "-m", "kfopt.models.torch_ddp",
               *worker_args(str(dataset_dir), str(out_dir), str(metrics), **train)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise ModelError(f"Data-parallel training with {workers} workers did not finish within "
                             f"{timeout_s:.0f} s; lower train.epochs or raise the stage's timeout.") from err
        if done.returncode != 0:
            raise ModelError(failure_message(logs, done.stdout + done.stderr, workers))
        return json.loads(metrics.read_text())


def failure_message(log_dir: Path, launcher_output: str, workers: int) -> str:
    """One message naming the failed worker(s) and quoting each one's last lines of stderr."""
    failed = []
    for err_log in sorted(log_dir.glob("**/stderr.log")):
        text = err_log.read_text(errors="replace")
        if "Traceback" in text or "kfopt: error:" in text:
            tail = " | ".join(line for line in text.strip().splitlines()[-LOG_TAIL_LINES:] if line.strip())
            failed.append(f"worker rank {err_log.parent.name}: {tail}")
    if not failed:
        lines = [line for line in launcher_output.strip().splitlines() if line.strip()]
        failed.append("launcher: " + " | ".join(lines[-LOG_TAIL_LINES:]))
    return (f"Data-parallel training with {workers} workers failed (torch.distributed.run). "
            + " ;; ".join(failed))


def global_batches(n: int, batch_size: int, seed: int, epochs: int):
    """Each epoch's global batches, exactly as one process draws them (kfopt.frameworks.torch.fine_tune).

    One generator seeded once, one permutation per epoch, consecutive slices of `batch_size`: every
    rank computes the same sequence, so N workers see the same global batches as one process.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        yield [order[i:i + batch_size] for i in range(0, n, batch_size)]


def shard(batch, rank: int, world_size: int):
    """This rank's contiguous part of a global batch (parts differ by at most one sample)."""
    return batch.tensor_split(world_size)[rank]


def _train(ds, model, *, rank: int, world_size: int, device, epochs: int, batch_size: int, learning_rate: float,
           patience: int, mixed_precision: str, seed: int) -> dict[str, list[float]]:
    """fine_tune's loop under DDP: the same global batches, each rank its part, gradients of the batch mean.

    Each rank's loss is its samples' summed loss times world_size over the global batch's size; DDP
    averages the ranks' gradients, so the update is the gradient of the global batch's mean loss, as in
    one process, even for a last batch that does not split evenly. Only float summation order differs.
    """
    import copy

    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from kfopt.frameworks import torch as adapter

    class Logits(torch.nn.Module):
        """The module's logits as forward, so the loss goes through DDP's forward (gradient sync)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.logits(x)

    task = ds.schema.task
    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
    if len(xt) < world_size:
        raise ConfigError(f"The training split has {len(xt)} samples, fewer than train.workers ({world_size}).")
    x_t = torch.from_numpy(np.ascontiguousarray(xt, np.float32))
    y_t = torch.from_numpy(yt.astype(np.int64))
    ddp = DistributedDataParallel(Logits(model).to(device), device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=learning_rate)
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(mixed_precision)
    loss_of = adapter._loss_fn(model, task)

    def summed_loss(x, y):
        logits = ddp(x.to(device))
        if task == "binary":
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.to(device).float(), reduction="sum")
        return F.cross_entropy(logits, y.to(device), reduction="sum")

    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best, best_state, waited = float("inf"), None, 0
    torch.manual_seed(seed)
    for batches in global_batches(len(x_t), batch_size, seed, epochs):
        ddp.train()
        for batch in batches:
            idx = shard(batch, rank, world_size)
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = summed_loss(x_t[idx], y_t[idx]) * (world_size / len(batch))
            loss.backward()
            optimizer.step()
        model.cpu()
        for prefix, (x, y) in (("", (xt, yt)), ("val_", (xv, yv))):
            loss_value, acc = adapter._evaluate(model, loss_of, x, y.astype(np.int64), task)
            history[f"{prefix}loss"].append(loss_value)
            history[f"{prefix}accuracy"].append(acc)
        model.to(device)
        stop = torch.zeros(1, device=device)
        if patience:
            if history["val_loss"][-1] < best - 1e-7:
                best, best_state, waited = history["val_loss"][-1], copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                stop[0] = float(waited >= patience)
        dist.broadcast(stop, src=0)  # rank 0 decides, so no rank waits on a collective the others left
        if stop.item():
            break
    model.cpu()
    if best_state is not None:
        model.load_state_dict({k: v.cpu() for k, v in best_state.items()})
    model.eval()
    return history


def _worker(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from kfopt import storage
    from kfopt.data import dataset as ds_mod
    from kfopt.models import torch_architectures

    env = rendezvous(os.environ)
    os.environ.setdefault("MASTER_ADDR", env["master_addr"])
    os.environ.setdefault("MASTER_PORT", str(env["master_port"]))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{env['local_rank']}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=env["rank"], world_size=env["world_size"])
    try:
        torch_architectures.check(a.architecture)
        with tempfile.TemporaryDirectory(prefix="kfopt-ddp-data-") as tmp:
            ds = ds_mod.read(storage.fetch(a.dataset, Path(tmp)))
        torch.manual_seed(a.seed)
        model = torch_architectures.build(a.architecture, ds.schema.feature_shape, ds.schema.num_classes, a.width)
        curves = _train(ds, model, rank=env["rank"], world_size=env["world_size"], device=device, epochs=a.epochs,
                        batch_size=a.batch_size, learning_rate=a.learning_rate, patience=a.patience,
                        mixed_precision=a.mixed_precision, seed=a.seed)
        if env["rank"] == 0:
            _write(a, ds, model, curves, env["world_size"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _write(a: argparse.Namespace, ds, model, curves: dict[str, list[float]], world_size: int) -> None:
    """Rank 0's part: the baseline (folder or gs:// URI, written whole or not at all) and the metrics JSON."""
    import torch

    from kfopt import storage, verify
    from kfopt.frameworks import torch as adapter
    from kfopt.models.train import write_baseline

    x, y = ds.split("test")
    test = verify.quality(adapter.predict(model, x), y, ds.schema.task)
    parameters = sum(int(p.numel()) for p in model.parameters())
    params = {"architecture": a.architecture, "epochs_run": len(curves["loss"]), "batch_size": a.batch_size,
              "learning_rate": a.learning_rate, "mixed_precision": a.mixed_precision, "seed": a.seed,
              "width": a.width, "workers": world_size}
    extra = {"parameters": parameters, "test_accuracy": float(test["accuracy"]), "torch": torch.__version__,
             "distributed": "DistributedDataParallel"}
    if storage.is_gcs(a.out):
        with tempfile.TemporaryDirectory(prefix="kfopt-ddp-out-") as tmp:
            write_baseline(Path(tmp) / "baseline", adapter, model, ds.schema, params, extra)
            storage.upload_dir(Path(tmp) / "baseline", a.out)
    else:
        write_baseline(Path(a.out), adapter, model, ds.schema, params, extra)
    storage.write_json(a.metrics, {"test_accuracy": float(test["accuracy"]), "epochs": len(curves["loss"]),
                                   "final_val_accuracy": curves["val_accuracy"][-1], "parameters": parameters,
                                   "workers": world_size, "history": curves})


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m kfopt.models.torch_ddp", __doc__.splitlines()[0])
    a = p.parse_args(argv)
    try:
        check_workers(rendezvous(os.environ)["world_size"], a.batch_size)
        _worker(a)
    except KfoptError as err:
        print(f"kfopt: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
