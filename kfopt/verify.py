"""Correctness of a variant against the baseline, on the test split.

A variant passes when it loses at most `accuracy_budget` percentage points of accuracy AND agrees
with the baseline's top-1 prediction on at least `min_agreement` of the samples. Agreement catches
a variant that keeps the accuracy by luck while answering differently.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
            accuracy_budget: float, min_agreement: float) -> dict[str, Any]:
    pred, base = labels(probs, task), labels(base_probs, task)
    delta_pp = float(((pred == y).mean() - (base == y).mean()) * 100)
    agreement = float((pred == base).mean())
    reasons = []
    if -delta_pp > accuracy_budget + 1e-9:
        reasons.append(f"accuracy {-delta_pp:.2f} pp below the baseline, budget {accuracy_budget:g} pp")
    if agreement < min_agreement:
        reasons.append(f"top-1 agreement {agreement:.3f} < {min_agreement:g}")
    return {"max_abs_error": float(np.abs(probs.reshape(base_probs.shape) - base_probs).max()),
            "agreement": agreement, "accuracy_delta_pp": delta_pp, "passed": not reasons,
            "reason": "; ".join(reasons) or "within budget"}
