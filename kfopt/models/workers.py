"""What every data-parallel training worker takes on its command line (torch DDP and Keras MWMS alike).

Both entry points (`python -m kfopt.models.torch_ddp`, `python -m kfopt.models.keras_mwms`) are started
once per worker by a launcher (torch.distributed.run, a TrainJob, kfopt's local TF launcher) with the
same training settings; one parser, one argument builder and one check keep the two in step.
"""

from __future__ import annotations

import argparse

from kfopt.errors import ConfigError


def check_workers(workers: int, batch_size: int) -> None:
    """`batch_size` is the global batch: every worker must get the same, non-zero share of it."""
    if workers < 1:
        raise ConfigError(f"train.workers must be at least 1, got {workers}.")
    if workers > batch_size:
        raise ConfigError(f"train.workers ({workers}) is more than train.batch_size ({batch_size}), the global "
                          "batch split over the workers, so some workers would get no sample a step; use at most "
                          f"{batch_size} workers or a larger batch.")
    if batch_size % workers:
        raise ConfigError(f"train.batch_size ({batch_size}) is the global batch and must be a multiple of "
                          f"train.workers ({workers}), so that every worker takes the same number of samples "
                          "a step; change one of them.")


def worker_args(dataset: str, out: str, metrics: str, *, architecture: str, epochs: int, batch_size: int,
                learning_rate: float, patience: int, seed: int, mixed_precision: str = "none",
                width: float = 1.0) -> list[str]:
    """The worker's command-line arguments (locally and in a TrainJob, kfopt.trainjob), read by `parser`."""
    return ["--dataset", dataset, "--out", out, "--metrics", metrics, "--architecture", architecture,
            "--epochs", str(epochs), "--batch-size", str(batch_size), "--learning-rate", str(learning_rate),
            "--patience", str(patience), "--mixed-precision", mixed_precision, "--seed", str(seed),
            "--width", str(width)]


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--dataset", required=True, help="Dataset artifact: a folder or gs:// URI")
    p.add_argument("--out", required=True, help="where worker 0 writes the baseline variant (folder or gs:// URI)")
    p.add_argument("--metrics", required=True, help="where worker 0 writes the metrics JSON (file or gs:// URI)")
    p.add_argument("--architecture", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True, help="global batch (split over the workers)")
    p.add_argument("--learning-rate", type=float, required=True)
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--mixed-precision", default="none")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--width", type=float, default=1.0)
    return p
