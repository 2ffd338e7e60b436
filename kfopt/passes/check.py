"""The in-stage check: what a stage or pass decides on before the benchmark sees a variant.

It compares a candidate (loaded through the runner registry, exactly as the benchmark loads it) with
the *baseline* on the validation split, by the benchmark's rule (kfopt.verify.compare), but with only
the accuracy budget that the candidate's parent has not already spent: a parent that lost 0.3 pp of
a 0.5 pp budget leaves its int8 child 0.2 pp. So a chain (prune → int8) cannot lose the budget once
per step and still pass. The result is recorded in kfopt.json as `extra["in_stage_check"]` (with
`budget_left_pp`); a child reads its parent's there.

The rule is the gate's (kfopt.verify.compare, one rule): a candidate is rejected only when it loses more
than the budget left with `confidence` (the paired bootstrap interval of kfopt.stats), and a check the
validation rows are too few to decide says so in its reason.

This is not the gate. The gate is the benchmark's verification (kfopt.verify: test split, against the
baseline), which every variant meets before kfopt.select may pick it, and which no stage can skip.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import stats, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError

SWITCHED_OFF = "switched off by a pipeline parameter"
KEY = "in_stage_check"  # where kfopt.json records it


def calibration_set(ds: ds_mod.Dataset, count: int, seed: int = 0) -> np.ndarray:
    """`count` samples (not batches) drawn without replacement from the training split.

    A count larger than the training split is clamped to the whole split, with a warning: using every
    sample is the best calibration there is, and refusing would stop a pipeline over a harmless setting.
    """
    x, _ = ds.split("train")
    if count < 1:
        raise ConfigError(f"calibration_samples must be at least 1, got {count}.")
    if count > len(x):
        warnings.warn(f"calibration_samples={count} is larger than the training split ({len(x)} samples); "
                      f"calibrating on all {len(x)}.", UserWarning, stacklevel=2)
        count = len(x)
    pick = np.sort(np.random.default_rng(seed).choice(len(x), size=count, replace=False))
    return np.ascontiguousarray(x[pick], dtype=np.float32)


@dataclasses.dataclass
class InStageCheck:
    """A candidate against the baseline on the validation split, within the budget its parent left."""

    x: np.ndarray
    y: np.ndarray
    reference: np.ndarray  # the baseline's probabilities on x
    task: str
    accuracy_budget: float  # pp, the whole budget
    min_agreement: float
    spent_pp: float = 0.0  # what the candidate's parent already lost against the baseline
    confidence: float = stats.CONFIDENCE  # verify.confidence: of the accuracy delta's interval

    @classmethod
    def against_baseline(cls, baseline_dir: Path, ds: ds_mod.Dataset, accuracy_budget: float,
                         min_agreement: float, confidence: float = stats.CONFIDENCE) -> "InStageCheck":
        from kfopt import bench, formats

        x, y = ds.split("val")
        return cls(x, y, bench.predict_all(formats.load(baseline_dir), x), ds.schema.task, accuracy_budget,
                   min_agreement, confidence=confidence)

    @property
    def budget_left_pp(self) -> float:
        return max(0.0, self.accuracy_budget - self.spent_pp)

    def after(self, parent_dir: Path) -> "InStageCheck":
        """The check for a child of the variant at `parent_dir`: the parent's own loss is spent.

        The loss comes from the parent's recorded in-stage check, else it is measured now; the baseline
        has spent nothing. A parent that gained accuracy leaves the whole budget.
        """
        meta = variant.read(parent_dir, verify=False)
        if meta.parent is None:
            return dataclasses.replace(self, spent_pp=0.0)
        recorded = meta.extra.get(KEY)
        delta = recorded["accuracy_delta_pp"] if isinstance(recorded, dict) else self.check(parent_dir)[
            "accuracy_delta_pp"]
        return dataclasses.replace(self, spent_pp=max(0.0, -float(delta)))

    def compare(self, probs: np.ndarray) -> dict[str, Any]:
        result = verify.compare(probs, self.reference, self.y, self.task, self.budget_left_pp, self.min_agreement,
                                self.confidence)
        if self.spent_pp and not result["passed"]:
            result["reason"] += f" (its parent had spent {self.spent_pp:.2f} of the {self.accuracy_budget:g} pp)"
        return {**result, "against": "baseline", "split": "validation", "samples": int(len(self.y)),
                "budget_pp": self.accuracy_budget, "parent_spent_pp": round(self.spent_pp, 4),
                "budget_left_pp": round(self.budget_left_pp, 4)}

    def check(self, variant_dir: Path) -> dict[str, Any]:
        from kfopt import bench, formats

        return self.compare(bench.predict_all(formats.load(variant_dir), self.x))

    def record(self, variant_dir: Path) -> variant.VariantMeta:
        """Check the variant at `variant_dir` and write the result into its kfopt.json."""
        meta = variant.read(variant_dir)
        meta.extra[KEY] = self.check(variant_dir)
        return variant.write(variant_dir, meta)

    def describe(self) -> str:
        return (f"validation split ({len(self.y)} samples) against the baseline, {self.budget_left_pp:g} pp of the "
                f"{self.accuracy_budget:g} pp budget left, rejected only when confidently worse "
                f"({self.confidence:.0%})")


def write_skipped(out_dir: Path, names: list[tuple[str, str, str]], reason: str, technique: str,
                  parent: str | None) -> None:
    """Skipped variants (name, format, target) with the reason, so the report shows what was not made."""
    for name, fmt, target in names:
        variant.write_skipped(Path(out_dir) / name, name, fmt, target, reason, technique=technique, parent=parent)
