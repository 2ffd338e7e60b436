"""Data-parallel training of kfopt's Keras architectures: N worker processes, MultiWorkerMirroredStrategy.

TensorFlow has no launcher like torch.distributed.run: a multi-worker job is N processes, each told the
whole cluster and its own index in `TF_CONFIG`. Two launchers start this module's `main()`:

- `launch()` (the train stage, `train.engine: local`) starts N copies on localhost ports, waits for
  them, and turns a failed worker into one KfoptError quoting that worker's log tail;
- a Kubeflow Trainer TrainJob on kfopt's `kfopt-tensorflow-distributed` runtime (kfopt.trainjob,
  manifests/trainer/) starts one copy per node. Trainer has no TensorFlow plugin, so the runtime passes
  the node's completion index, its JobSet's name and the port through the downward API, the TrainJob
  passes the node count, and `trainer_tf_config` builds TF_CONFIG from them and JobSet's stable DNS
  hostnames, `<jobset>-node-0-<index>.<jobset>`.

Every worker runs the same program (MWMS's collectives need all of them for fit, evaluate and save);
worker 0, the chief, keeps its baseline and metrics (a folder or gs:// URI), the others write to a scratch
folder that is thrown away. `batch_size` is the global batch, as for torch (kfopt.models.torch_ddp): every
worker shuffles with the same seed and Keras's data sharding gives each its slice of every global batch,
so 2 workers train the same model as one process up to float summation order (tests/test_distributed.py).
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

from typing import Mapping

from kfopt.errors import ConfigError, KfoptError, ModelError
from kfopt.models.workers import check_workers, parser, worker_args

LOG_TAIL_LINES = 20
#: What kfopt's TensorFlow runtime (manifests/trainer/tensorflow-distributed.yaml) and TrainJob give a node.
NUM_NODES, NODE_INDEX, JOBSET_NAME, TF_PORT = ("KFOPT_NUM_NODES", "KFOPT_NODE_INDEX", "KFOPT_JOBSET_NAME",
                                               "KFOPT_TF_PORT")
#: The runtime's one replicated job; JobSet names its pods <jobset>-<replicated job>-<job index>-<pod index>.
REPLICATED_JOB = "node"


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
    """TF_CONFIG of local worker `index` among workers listening on 127.0.0.1 `ports`."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def trainer_tf_config(env: Mapping[str, str]) -> str:
    """TF_CONFIG of a TrainJob node, from what kfopt's TensorFlow runtime and TrainJob put in its environment.

    JobSet gives pod `i` of the one job of replicated job `node` the hostname `<jobset>-node-0-<i>` in the
    headless-service subdomain `<jobset>` (the default), so every node can name every other one.
    """
    missing = [k for k in (NUM_NODES, NODE_INDEX, JOBSET_NAME, TF_PORT) if not env.get(k)]
    if missing:
        raise ConfigError(f"This TrainJob node lacks {', '.join(missing)}, which kfopt's TensorFlow runtime sets; "
                          "run it on the kfopt-tensorflow-distributed ClusterTrainingRuntime "
                          "(kubectl apply -k manifests/trainer).")
    try:
        nodes, index, port = int(env[NUM_NODES]), int(env[NODE_INDEX]), int(env[TF_PORT])
    except ValueError:
        raise ConfigError(f"{NUM_NODES}, {NODE_INDEX} and {TF_PORT} must be integers, got "
                          f"{env[NUM_NODES]!r}, {env[NODE_INDEX]!r}, {env[TF_PORT]!r}.") from None
    if not 0 <= index < nodes:
        raise ConfigError(f"{NODE_INDEX} ({index}) must be between 0 and {NUM_NODES} - 1 ({nodes - 1}).")
    jobset = env[JOBSET_NAME]
    hosts = [f"{jobset}-{REPLICATED_JOB}-0-{i}.{jobset}:{port}" for i in range(nodes)]
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def launch(dataset_dir: Path, out_dir: Path, *, workers: int, timeout_s: float = 1800.0, **train: Any
           ) -> dict[str, Any]:
    """Train with `workers` local TF processes; the chief writes the baseline to out_dir."""
    check_workers(workers, train["batch_size"])
    with tempfile.TemporaryDirectory(prefix="kfopt-mwms-") as tmp:
        metrics, ports, procs = Path(tmp) / "metrics.json", _free_ports(workers), []
        args = worker_args(str(dataset_dir), str(out_dir), str(metrics), **train)
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
    from kfopt import storage
    from kfopt.data import dataset as ds_mod

    with tempfile.TemporaryDirectory(prefix="kfopt-mwms-data-") as tmp:  # bad data fails before TF starts
        ds = ds_mod.read(storage.fetch(a.dataset, Path(tmp)))

    from kfopt.tfenv import keras, tf

    strategy = tf().distribute.MultiWorkerMirroredStrategy()  # first: it must exist before other TF ops
    index = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {}).get("index", 0)

    from kfopt.frameworks import keras as adapter
    from kfopt.models import train

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
        local = index == 0 and not storage.is_gcs(a.out)
        out = Path(a.out) if local else Path(scratch) / "baseline"  # every worker saves (collectives)
        train.write_baseline(out, adapter, model, ds.schema, params, extra)
        if index == 0 and not local:
            storage.upload_dir(out, a.out)
    if index == 0:
        storage.write_json(a.metrics, {
            "test_accuracy": float(test_acc), "epochs": len(curves["loss"]),
            "final_val_accuracy": (curves.get("val_accuracy") or [None])[-1],
            "parameters": int(model.count_params()), "workers": strategy.num_replicas_in_sync, "history": curves})


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m kfopt.models.keras_mwms", __doc__.splitlines()[0])
    a = p.parse_args(argv)
    try:
        if "TF_CONFIG" not in os.environ and JOBSET_NAME in os.environ:  # a node of a TrainJob
            os.environ["TF_CONFIG"] = trainer_tf_config(os.environ)
        if os.environ.get("TF_CONFIG"):
            check_workers(len(json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]), a.batch_size)
        _worker(a)
    except KfoptError as err:
        print(f"kfopt: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
