"""Correctness of a variant against the baseline, on the same rows (the test split in the gate).

A variant passes when it does not lose *confidently* more than `accuracy_budget` percentage points of
accuracy AND agrees with the baseline's top-1 prediction on at least `min_agreement` of the rows.
Agreement catches a variant that keeps the accuracy by luck while answering differently; it also caps
what any passing variant can lose: (1 - min_agreement) of the rows, 3 pp at 0.97.

The accuracy rule (kfopt.stats): the paired delta's `confidence` interval (bootstrap over the rows) is
placed against -budget.

- its upper end below -budget: the variant loses more than the budget with that confidence → rejected;
- its lower end at or above -budget: within budget → passes;
- it straddles -budget: "too few rows to tell" → passes, and the reason says so plainly. A handful of rows
  cannot flip the decision: on 360 rows a loss of 3 samples (0.83 pp) against a 0.5 pp budget is too few
  to tell, and only a loss the rows can actually show is rejected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kfopt import stats


def labels(probs: np.ndarray, task: str) -> np.ndarray:
    if task == "binary":
        return (probs.reshape(len(probs), -1)[:, 0] >= 0.5).astype(np.int64)
    return probs.argmax(axis=1)


def auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC by the rank statistic (no sklearn import in the benchmark worker)."""
    pos, neg = scores[y == 1], scores[y == 0]
    if not len(pos) or not len(neg):
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks of ties
        tie = allv == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def quality(probs: np.ndarray, y: np.ndarray, task: str) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": float((labels(probs, task) == y).mean())}
    if task == "binary":
        out["auc"] = auc(probs.reshape(len(probs), -1)[:, 0], y)
    return out


def compare(probs: np.ndarray, base_probs: np.ndarray, y: np.ndarray, task: str,
            accuracy_budget: float, min_agreement: float, confidence: float = stats.CONFIDENCE) -> dict[str, Any]:
    """The verification record of `probs` against `base_probs` on the same rows `y` (see the module's rule)."""
    pred, base = labels(probs, task), labels(base_probs, task)
    paired = stats.paired_delta(pred == y, base == y, confidence)
    agreement = float((pred == base).mean())
    verdict = stats.verdict(paired["delta_ci_pp"], accuracy_budget)
    shown = f"{stats.describe(paired)} at {confidence:.0%}"
    reasons = []
    if verdict == stats.WORSE:
        reasons.append(f"accuracy {-paired['accuracy_delta_pp']:.2f} pp below the baseline, more than the "
                       f"{accuracy_budget:g} pp budget with {confidence:.0%} confidence ({shown})")
    if agreement < min_agreement:
        reasons.append(f"top-1 agreement {agreement:.3f} < {min_agreement:g}")
    if verdict == stats.TOO_FEW:
        reasons.append(f"{stats.TOO_FEW} whether it is within the {accuracy_budget:g} pp budget ({shown}); "
                       "not rejected for accuracy: only a loss confidently beyond the budget is")
    return {"max_abs_error": float(np.abs(probs.reshape(base_probs.shape) - base_probs).max()),
            "agreement": agreement, **paired, "verdict": verdict,
            "passed": verdict != stats.WORSE and agreement >= min_agreement,
            "reason": "; ".join(reasons) or f"within budget ({shown})"}
