"""One model in its own process, loaded once, timed on request: the bench's measuring side.

run_bench.py starts one worker per model (as kfopt.bench does: one runtime's thread pools and
compiled graphs never share a process with another's), waits until all are loaded, then asks them in
turn, round after round, to time a batch, so machine noise lands on every model alike. Protocol:
JSON lines; the worker answers on the stdout it had at start (anything libraries print goes to stderr).

Timing is kfopt.bench.time_calls (warm-up, then timed calls until the median's 95% CI is within the
target or the time is up) on the same inputs kfopt's benchmark uses (test split rows drawn with
default_rng(0), batch sizes in order). Each call is also timed here, to give percentiles beyond
time_calls' summary; the figures reported come from those same calls, warm-up excluded.

Usage: python timing_worker.py '{"kind": "variant"|"keras"|"torch", "path": ..., "dataset_dir": ...,
                                 "batch_sizes": [...], "threads": 1, "predictions": ...}'
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def keras_eager(baseline_dir: str, threads: int):
    """The as-trained model served the usual way: an eager Keras call (never model.predict)."""
    from kfopt.frameworks import keras
    from kfopt.tfenv import tf

    t = tf()
    t.config.threading.set_intra_op_parallelism_threads(threads)
    t.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.load(baseline_dir)
    return lambda x: model(x, training=False).numpy()


def torch_eager(variant_dir: str, threads: int):
    """A torch model served the usual way: `model(x)` under `torch.inference_mode()`, one call per batch.

    The program is the variant's `model.pt2`, read by `torch.export.load` (no pickled code runs) and
    turned back into a module with `.module()`; the conversions to and from numpy are part of the call,
    as they are for every other runtime here.
    """
    from pathlib import Path

    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    module = torch.export.load(str(Path(variant_dir) / "model.pt2")).module()

    def predict(x):
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return predict


def variant_runner(variant_dir: str, threads: int):
    from kfopt import formats

    return formats.load(variant_dir, threads=threads).predict


def percentiles(ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (10, 25, 50, 75, 90)}


def main(spec: dict) -> None:
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from kfopt.bench import time_calls
    from kfopt.data import dataset as ds_mod

    start = time.perf_counter()
    load = {"keras": keras_eager, "torch": torch_eager}.get(spec["kind"], variant_runner)
    predict = load(spec["path"], spec["threads"])
    x, _ = ds_mod.read(spec["dataset_dir"]).split("test")
    np.save(spec["predictions"], np.concatenate([predict(x[i:i + 64]) for i in range(0, len(x), 64)]))
    rng = np.random.default_rng(0)
    batches = {bs: x[rng.choice(len(x), size=bs, replace=bs > len(x))] for bs in spec["batch_sizes"]}
    answer.write(json.dumps({"status": "ready", "load_seconds": time.perf_counter() - start}) + "\n")

    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        batch = batches[request["batch"]]
        calls: list[float] = []

        def call():
            t0 = time.perf_counter()
            predict(batch)
            calls.append(time.perf_counter() - t0)

        stats = time_calls(call, **request["settings"])
        ms = np.array(calls[request["settings"]["warmup"]:]) * 1e3
        answer.write(json.dumps({"status": "ok", "samples": len(ms), "ci95_rel": stats["ci95_rel"],
                                 **percentiles(ms)}) + "\n")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
