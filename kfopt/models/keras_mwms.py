"""Data-parallel training of kfopt's Keras architectures: N local worker processes, MultiWorkerMirroredStrategy.

TensorFlow has no launcher like torch.distributed.run: a multi-worker job is N processes, each told the
whole cluster and its own index in `TF_CONFIG`. `launch()` (the train stage) starts N copies of this
module's `main()` on localhost ports, waits for them, and turns a failed worker into one KfoptError
quoting that worker's log tail. Every worker runs the same program (MWMS's collectives need all of them
for fit, evaluate and save); worker 0, the chief, keeps its baseline and metrics, the others write to a
scratch folder that is thrown away. `batch_size` is the global batch, as for torch (kfopt.models.torch_ddp).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kfopt.errors import KfoptError, ModelError

LOG_TAIL_LINES = 20


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def launch(dataset_dir: Path, out_dir: Path, *, workers: int, timeout_s: float = 1800.0, **train: Any
           ) -> dict[str, Any]:
    """Train with `workers` local TF processes; the chief writes the baseline to out_dir."""
    from kfopt.models import torch_ddp

    torch_ddp.check_workers(workers, train["batch_size"])
    with tempfile.TemporaryDirectory(prefix="kfopt-mwms-") as tmp:
        metrics, ports, procs = Path(tmp) / "metrics.json", _free_ports(workers), []
        args = torch_ddp.worker_args(str(dataset_dir), str(out_dir), str(metrics), **train)
        for i in range(workers):
            log = open(Path(tmp) / f"worker-{i}.log", "w")
            env = {**os.environ, "TF_CONFIG": tf_config(ports, i), "OMP_NUM_THREADS": "1"}
            procs.append((subprocess.Popen([sys.executable, "-m", "kfopt.models.keras_mwms", *args], env=env,
                                           stdout=log, stderr=subprocess.STDOUT), log))
        deadline, codes = time.monotonic() + timeout_s, {}
        while len(codes) < workers and time.monotonic() < deadline:
            for i, (proc, _) in enumerate(procs):
                if i not in codes and proc.poll() is not None:
                    codes[i] = proc.returncode
            if any(codes.values()):
                break  # one failed: the others would wait on its collectives forever
            time.sleep(0.2)
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        failed = [i for i, c in codes.items() if c]
        if failed or len(codes) < workers:
            tails = []
            for i in failed or range(workers):
                lines = [ln for ln in (Path(tmp) / f"worker-{i}.log").read_text(errors="replace").splitlines()
                         if ln.strip()]
                tails.append(f"worker {i}: " + " | ".join(lines[-LOG_TAIL_LINES:]))
            what = "failed" if failed else f"did not finish within {timeout_s:g} s"
            raise ModelError(f"Data-parallel Keras training with {workers} workers (MultiWorkerMirroredStrategy) "
                             f"{what}. " + " ;; ".join(tails))
        return json.loads(metrics.read_text())


def _worker(a: argparse.Namespace) -> None:
    from kfopt.tfenv import keras, tf

    strategy = tf().distribute.MultiWorkerMirroredStrategy()  # first: it must exist before other TF ops
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    from kfopt.data import dataset as ds_mod
    from kfopt.frameworks import keras as adapter
    from kfopt.models import train

    ds = ds_mod.read(Path(a.dataset))
    keras().utils.set_random_seed(a.seed)
    keras().mixed_precision.set_global_policy("float32" if a.mixed_precision == "none" else a.mixed_precision)
    with strategy.scope():
        model = train.build(a.architecture, ds.schema.feature_shape, ds.schema.num_classes, a.width)
        curves = adapter.fine_tune(model, ds, epochs=a.epochs, batch_size=a.batch_size,
                                   learning_rate=a.learning_rate, patience=a.patience, seed=a.seed)
        if a.mixed_precision != "none":
            model = train.float32_copy(model, a.architecture, ds.schema, a.width)
            adapter.compile_for(model, ds.schema.task, a.learning_rate)
    xt, yt = ds.split("test")
    _, test_acc = model.evaluate(xt, yt, verbose=0)
    params = {"architecture": a.architecture, "epochs_run": len(curves["loss"]), "batch_size": a.batch_size,
              "learning_rate": a.learning_rate, "mixed_precision": a.mixed_precision, "seed": a.seed,
              "width": a.width, "workers": strategy.num_replicas_in_sync}
    extra = {"parameters": int(model.count_params()), "test_accuracy": float(test_acc),
             "distributed": "MultiWorkerMirroredStrategy"}
    with tempfile.TemporaryDirectory(prefix="kfopt-mwms-scratch-") as scratch:
        out = Path(a.out) if index == 0 else Path(scratch) / "baseline"  # every worker saves (collectives)
        train.write_baseline(out, adapter, model, ds.schema, params, extra)
    if index == 0:
        Path(a.metrics).write_text(json.dumps({
            "test_accuracy": float(test_acc), "epochs": len(curves["loss"]),
            "final_val_accuracy": (curves.get("val_accuracy") or [None])[-1],
            "parameters": int(model.count_params()), "workers": strategy.num_replicas_in_sync, "history": curves}))


def main(argv: list[str] | None = None) -> int:
    from kfopt.models.workers import parser

    p = parser("python -m kfopt.models.keras_mwms", __doc__.splitlines()[0])
    a = p.parse_args(argv)
    try:
        _worker(a)
    except KfoptError as err:
        print(f"kfopt: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
