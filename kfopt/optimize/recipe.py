"""Training to early stopping on the validation split, the learning rate halved on plateaus.

A fixed epoch count tuned on the bundled digits CNN is too many for it and too few for a brought
MobileNetV2; this recipe adapts: the trainer reports each epoch's validation score, and `Plateau`
says whether it is the best so far (keep those weights), what the learning rate is now, and when to
stop. Reduce-on-plateau rather than cosine decay because the run length is not known in advance: a
cosine schedule over the maximum epoch count would still be at a high rate when early stopping ends
the run. Framework-free, so the Keras and torch students share it.
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
    best: float = -math.inf
    best_epoch: int = 0  # 1-based; 0 before the first epoch
    epochs: int = 0
    stale: int = 0  # epochs since the best

    @property
    def lr_patience(self) -> int | None:
        return None if self.patience is None else max(1, self.patience // 2)

    def update(self, score: float) -> bool:
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


def summary(history: dict[str, list[float]], monitor: str, max_epochs: int) -> dict[str, Any]:
    """What the recipe did, from a run's per-epoch history (for kfopt.json and the search record)."""
    scores = history[monitor]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i)) if scores else -1
    return {"epochs_run": len(scores), "max_epochs": max_epochs, "best_epoch": best + 1,
            "stopped_early": len(scores) < max_epochs, f"best_{monitor}": scores[best] if scores else None,
            "final_learning_rate": history["learning_rate"][-1] if history.get("learning_rate") else None}
