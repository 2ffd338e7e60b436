"""What every data-parallel training worker takes on its command line (torch DDP and Keras MWMS alike).

Both entry points (`python -m kfopt.models.torch_ddp`, `python -m kfopt.models.keras_mwms`) are started
once per worker by a launcher (torch.distributed.run, a TrainJob, kfopt's local TF launcher) with the
same training settings; one parser keeps the two in step.
"""

from __future__ import annotations

import argparse


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
