"""How sure an accuracy delta is: paired statistics of a variant against the baseline on the same rows.

On the bundled digits test split (360 rows) one sample is 0.28 pp, so a 0.5 pp budget judged on the point
estimate rests on two samples. Both models answer the *same* rows, so the comparison is paired and only
the discordant rows carry information: `wins` (the variant right where the baseline is wrong) and `losses`
(the reverse). From them:

- the accuracy delta in pp, (wins - losses) / n;
- its confidence interval by the paired percentile bootstrap: resample the n rows with replacement, keeping
  each row's (variant, baseline) pair together. A resample is fully described by how many win, loss and tie
  rows it drew, which is a multinomial draw with the observed proportions, so the bootstrap draws those
  counts directly (the same distribution as resampling rows, at a cost independent of n), seeded;
- the exact McNemar p-value: under "neither is more accurate" each discordant row is a fair coin.

`verdict` places the interval against the budget: confidently within it, confidently worse, or straddling it
("too few rows to tell"). kfopt.verify turns that into the gate's decision.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95

WITHIN = "within budget"
WORSE = "worse than budget"
TOO_FEW = "too few rows to tell"


def check_confidence(confidence: float) -> None:
    """Refuses a confidence level outside (0.5, 1): below a coin toss the interval would be narrower than
    the point estimate's own noise, and 1 would need infinitely many rows."""
    from kfopt.errors import ConfigError

    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0.5 < confidence < 1:
        raise ConfigError(f"verify.confidence must be a number in (0.5, 1), e.g. 0.95 for a 95% interval; "
                          f"got {confidence!r}.")


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: P(a split of the discordant rows at least this uneven | fair coin)."""
    m = wins + losses
    if m == 0:
        return 1.0
    k = np.arange(min(wins, losses) + 1)
    log_pmf = (math.lgamma(m + 1) - np.vectorize(math.lgamma)(k + 1) - np.vectorize(math.lgamma)(m - k + 1)
               - m * math.log(2))
    return float(min(1.0, 2 * np.exp(log_pmf).sum()))


def paired_delta(correct: np.ndarray, base_correct: np.ndarray, confidence: float = CONFIDENCE,
                 resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """The paired accuracy delta (variant - baseline, pp) on the same rows, with its bootstrap interval.

    `correct` and `base_correct` say, row by row, whether each model answered that row correctly.
    """
    correct, base_correct = np.asarray(correct, bool), np.asarray(base_correct, bool)
    if correct.shape != base_correct.shape or correct.ndim != 1 or not len(correct):
        raise ValueError(f"paired rows needed: got {correct.shape} and {base_correct.shape}")
    n = len(correct)
    wins, losses = int((correct & ~base_correct).sum()), int((~correct & base_correct).sum())
    counts = np.random.default_rng(seed).multinomial(n, [wins / n, losses / n, 1 - (wins + losses) / n],
                                                     size=resamples)
    deltas = (counts[:, 0] - counts[:, 1]) * 100.0 / n  # the same arithmetic as the point estimate's
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(deltas, [tail, 1 - tail], method="inverted_cdf")
    return {"accuracy_delta_pp": (wins - losses) * 100.0 / n, "delta_ci_pp": [float(lo), float(hi)],
            "confidence": confidence, "n_rows": n, "discordant": wins + losses, "wins": wins, "losses": losses,
            "mcnemar_p": mcnemar_exact(wins, losses), "resamples": resamples, "seed": seed}


def verdict(delta_ci_pp: list[float], budget_pp: float) -> str:
    """Where the interval lies against a loss of `budget_pp`: WITHIN (its lower end loses at most the budget),
    WORSE (even its upper end loses more) or TOO_FEW (it straddles -budget: these rows cannot tell)."""
    lo, hi = delta_ci_pp
    if lo >= -budget_pp - 1e-9:
        return WITHIN
    if hi < -budget_pp - 1e-9:
        return WORSE
    return TOO_FEW


def describe(record: dict[str, Any]) -> str:
    """'-0.28 pp [-0.83, +0.28], n=360': the delta, its interval and the rows behind it."""
    lo, hi = record["delta_ci_pp"]
    return f"{record['accuracy_delta_pp']:+.2f} pp [{lo:+.2f}, {hi:+.2f}], n={record['n_rows']}"
