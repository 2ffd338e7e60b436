"""The train stage for `model.framework: torch`: build kfopt's torch architecture, fit it, write the baseline.

Training goes through the torch adapter's fine_tune (Adam, early stopping on validation loss with the
best weights restored, seeded; `mixed_bfloat16` is bf16 autocast on the CPU). The weights stay float32
under autocast, so the baseline is a float32 `.pt2` (format "torch", runtime "torch") with a dynamic
batch dimension, the "as trained" row that every variant is measured against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError

MIXED_PRECISION = ("none", "mixed_bfloat16", "mixed_float16")


def run(dataset_dir: Path, out_dir: Path, *, architecture: str, epochs: int, batch_size: int, learning_rate: float,
        patience: int, mixed_precision: str = "none", seed: int = 1, width: float = 1.0,
        workers: int = 1, engine: str = "local", namespace: str = "kfopt", timeout_s: float = 3600.0,
        deployment: str = "", api_client=None) -> dict[str, Any]:
    import torch

    from kfopt import verify
    from kfopt.frameworks import torch as adapter
    from kfopt.models import torch_architectures
    from kfopt.models.train import on_trainjob, write_baseline

    if mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}.")
    torch_architectures.check(architecture)
    hyper = dict(architecture=architecture, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                 patience=patience, mixed_precision=mixed_precision, seed=seed, width=width)
    if workers != 1 and engine == "trainjob":  # N nodes of a Kubeflow Trainer TrainJob (kfopt.trainjob)
        return on_trainjob(dataset_dir, out_dir, framework="torch", workers=workers, namespace=namespace,
                           timeout_s=timeout_s, deployment=deployment, api_client=api_client, **hyper)
    if workers != 1:  # N processes through torch.distributed.run, DistributedDataParallel (torch_ddp)
        from kfopt.models import torch_ddp

        return torch_ddp.launch(dataset_dir, out_dir, workers=workers, **hyper)
    ds = ds_mod.read(dataset_dir)
    torch.manual_seed(seed)
    model = torch_architectures.build(architecture, ds.schema.feature_shape, ds.schema.num_classes, width)
    curves = adapter.fine_tune(model, ds, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                               patience=patience, seed=seed, mixed_precision=mixed_precision)
    x, y = ds.split("test")
    test = verify.quality(adapter.predict(model, x), y, ds.schema.task)
    parameters = sum(int(p.numel()) for p in model.parameters())
    write_baseline(out_dir, adapter, model, ds.schema,
                   {"architecture": architecture, "epochs_run": len(curves["loss"]), "batch_size": batch_size,
                    "learning_rate": learning_rate, "mixed_precision": mixed_precision, "seed": seed, "width": width},
                   {"parameters": parameters, "test_accuracy": float(test["accuracy"]), "torch": torch.__version__})
    return {"test_accuracy": float(test["accuracy"]), "epochs": len(curves["loss"]),
            "final_val_accuracy": curves["val_accuracy"][-1], "parameters": parameters, "history": curves}
