"""Training to early stopping on the validation split, the learning rate halved on plateaus.

A fixed epoch count tuned on the bundled digits CNN is too many for it and too few for a brought
MobileNetV2; this recipe adapts: the trainer reports each epoch's validation score, and `Plateau`
says whether it is the best so far (keep those weights), what the learning rate is now, and when to
stop. The score (`score`) is the validation loss, or a monitored accuracy/agreement with the loss
breaking ties. A student monitors the loss: on a few hundred validation rows accuracy moves in steps
of a row or two and jitters while the model still improves, and a plateau rule fed that jitter halves
the rate and stops too soon (measured on the digits student, width 0.5: patience 5 on accuracy, even
with the loss breaking ties, stopped at epoch 10 with the best at epoch 5, 0.74 pp short of the
teacher; its validation loss kept falling until epoch 26, which matched the teacher).
Reduce-on-plateau rather than cosine decay because the run length is not known in advance: a cosine
schedule over the maximum epoch count would still be at a high rate when early stopping ends the run.
Framework-free, so the Keras and torch students share it (and torch pruning's recovery fine-tune).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

#: the learning rate is multiplied by this after `lr_patience` epochs without a better score
FACTOR = 0.5


@dataclasses.dataclass
class Plateau:
    """Best-so-far, learning rate and stop decision of one training run."""

    learning_rate: float
    patience: int | None  # epochs without a better score before training stops; None: run every epoch, constant rate
    best: tuple[float, ...] = (-math.inf,)
    best_epoch: int = 0  # 1-based; 0 before the first epoch
    epochs: int = 0
    stale: int = 0  # epochs since the best

    @property
    def lr_patience(self) -> int | None:
        return None if self.patience is None else max(1, self.patience // 2)

    def update(self, score: tuple[float, ...]) -> bool:
        """Record one epoch's validation score; True when it is the best so far (the weights to keep)."""
        self.epochs += 1
        if score > self.best:
            self.best, self.best_epoch, self.stale = score, self.epochs, 0
            return True
        self.stale += 1
        if self.lr_patience and self.stale % self.lr_patience == 0:
            self.learning_rate *= FACTOR
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience


def score(history: dict[str, list[float]], monitor: str, epoch: int = -1) -> tuple[float, ...]:
    """An epoch's validation score, higher is better: a loss (`monitor` ending in "loss") negated, else
    `monitor` first and the lower validation loss ("val_loss") breaking ties."""
    if monitor.endswith("loss"):
        return (-history[monitor][epoch],)
    return history[monitor][epoch], -history["val_loss"][epoch]


def summary(history: dict[str, list[float]], monitor: str, max_epochs: int) -> dict[str, Any]:
    """What the recipe did, from a run's per-epoch history (for kfopt.json and the search record)."""
    runs = len(history[monitor])
    best = max(range(runs), key=lambda i: (score(history, monitor, i), -i)) if runs else -1
    return {"epochs_run": runs, "max_epochs": max_epochs, "best_epoch": best + 1, "stopped_early": runs < max_epochs,
            f"best_{monitor}": history[monitor][best] if runs else None,
            "at_best": {k: v[best] for k, v in history.items() if k.startswith("val_") and runs},
            "final_learning_rate": history["learning_rate"][-1] if history.get("learning_rate") else None}
