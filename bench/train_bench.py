"""Training benchmark: bf16 autocast vs float32, and 1 vs N data-parallel workers, on the same data and seed.

    .venv/bin/python bench/train_bench.py [--epochs 5] [--limit 0] [--workers 2] [--out bench/train_bench.json]

Part 1 (precision): for Keras and torch, kfopt's digits CNN is built and trained by the framework's
adapter (`fine_tune`, Adam, no early stopping, `--epochs` epochs) once in float32 and once with
bf16 mixed precision (Keras `mixed_bfloat16` policy; torch bf16 autocast), from the same split and
seed. Time per epoch is the training call's wall time / epochs (Keras' first epoch includes tracing).
Accuracy is on the test split (a Keras bf16 model is evaluated through its float32 twin, as the
train stage exports it). Part 2 (workers): the torch train stage itself with train.workers 1 and N
(torch.distributed.run, DDP, gloo on CPU): wall time of the whole stage, launcher start-up and the
baseline's export included, so that the figure is what a user waits for. One run per setting;
on a shared machine the times are noisy, so read small differences as none.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kfopt import tfenv  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before any TF import)


def _keras(ds, epochs: int, precision: str, seed: int) -> dict:
    from kfopt.frameworks import keras as adapter
    from kfopt.models import train
    from kfopt.models.architectures import build
    from kfopt.tfenv import keras

    keras().utils.set_random_seed(seed)
    keras().mixed_precision.set_global_policy("float32" if precision == "none" else precision)
    model = build("digits_cnn", ds.schema.feature_shape, ds.schema.num_classes)
    start = time.perf_counter()
    curves = adapter.fine_tune(model, ds, epochs=epochs, batch_size=32, learning_rate=1e-3, seed=seed)
    seconds = time.perf_counter() - start
    if precision != "none":
        model = train.float32_copy(model, "digits_cnn", ds.schema)
        adapter.compile_for(model, ds.schema.task, 1e-3)
    x, y = ds.split("test")
    _, acc = model.evaluate(x, y, verbose=0)
    keras().mixed_precision.set_global_policy("float32")
    return {"seconds_per_epoch": seconds / epochs, "test_accuracy": float(acc),
            "final_loss": curves["loss"][-1]}


def _torch(ds, epochs: int, precision: str, seed: int) -> dict:
    import torch

    from kfopt import verify
    from kfopt.frameworks import torch as adapter
    from kfopt.models import torch_architectures

    torch.manual_seed(seed)
    model = torch_architectures.build("digits_cnn", ds.schema.feature_shape, ds.schema.num_classes)
    start = time.perf_counter()
    curves = adapter.fine_tune(model, ds, epochs=epochs, batch_size=32, learning_rate=1e-3, seed=seed,
                               mixed_precision=precision)
    seconds = time.perf_counter() - start
    x, y = ds.split("test")
    acc = verify.quality(adapter.predict(model, x), y, ds.schema.task)["accuracy"]
    return {"seconds_per_epoch": seconds / epochs, "test_accuracy": float(acc),
            "final_loss": curves["loss"][-1]}


def _workers(dataset: Path, root: Path, epochs: int, workers: int, seed: int) -> dict:
    from kfopt.models import torch_train

    start = time.perf_counter()
    m = torch_train.run(dataset, root / f"w{workers}", architecture="digits_cnn", epochs=epochs, batch_size=32,
                        learning_rate=1e-3, patience=0, seed=seed, workers=workers)
    seconds = time.perf_counter() - start
    return {"stage_seconds": seconds, "stage_seconds_per_epoch": seconds / epochs,
            "test_accuracy": m["test_accuracy"], "final_val_accuracy": m["final_val_accuracy"],
            "final_loss": m["history"]["loss"][-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit", type=int, default=0, help="digits samples kept (0: all 1797)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/train_bench.json"))
    a = p.parse_args(argv)

    from kfopt.data import dataset as ds_mod
    from kfopt.data import preprocess

    result: dict = {"epochs": a.epochs, "limit": a.limit, "seed": a.seed, "precision": {}, "workers": {}}
    with tempfile.TemporaryDirectory(prefix="kfopt-train-bench-") as tmp:
        root = Path(tmp)
        preprocess.run("digits", root / "dataset", limit=a.limit, seed=3)
        ds = ds_mod.read(root / "dataset")
        result["train_samples"] = int(len(ds.split("train")[0]))
        for name, fn in (("keras", _keras), ("torch", _torch)):
            for precision in ("none", "mixed_bfloat16"):
                row = fn(ds, a.epochs, precision, a.seed)
                result["precision"][f"{name} {precision}"] = row
                print(f"{name:5s} {precision:15s} {row['seconds_per_epoch']:.2f} s/epoch  test acc "
                      f"{row['test_accuracy']:.4f}  loss {row['final_loss']:.4f}", flush=True)
        for workers in (1, a.workers):
            row = _workers(root / "dataset", root, a.epochs, workers, a.seed)
            result["workers"][str(workers)] = row
            print(f"torch stage, {workers} worker(s): {row['stage_seconds']:.1f} s ({row['stage_seconds_per_epoch']:.2f} "
                  f"s/epoch)  test acc {row['test_accuracy']:.4f}  loss {row['final_loss']:.4f}", flush=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
