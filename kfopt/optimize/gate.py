"""What every optimize stage shares: calibration samples, the in-stage accuracy gate and the fallback.

The gate compares a candidate variant (loaded through the runner registry, exactly as the benchmark
loads it) with its float parent on the validation split, using the same rule as the benchmark's
verification (kfopt.verify.compare). The fallback retries an int8 conversion with the layers that
hurt most kept in float, and always keeps the best attempt: a stage never ends with "no model met
the goal, nothing saved".
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kfopt import variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError

SWITCHED_OFF = "switched off by a pipeline parameter"
# Fine-tuning (pruning, QAT, distillation) batch size; the stages are short, so this is not tuned.
FINE_TUNE_BATCH = 32


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


def probabilities(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """A tf-keras model's outputs by direct calls (Keras predict() costs ~45 ms a call)."""
    return np.concatenate([np.asarray(model(x[i:i + batch], training=False), np.float32)
                           for i in range(0, len(x), batch)])


@dataclasses.dataclass
class Gate:
    """The check an optimized variant must pass against its float reference, on the validation split."""

    x: np.ndarray
    y: np.ndarray
    reference: np.ndarray  # the float parent's probabilities on x
    task: str
    accuracy_budget: float
    min_agreement: float

    @classmethod
    def for_model(cls, model, ds: ds_mod.Dataset, accuracy_budget: float, min_agreement: float) -> "Gate":
        x, y = ds.split("val")
        return cls(x, y, probabilities(model, x), ds.schema.task, accuracy_budget, min_agreement)

    def check(self, variant_dir: Path) -> dict[str, Any]:
        from kfopt import bench, formats

        probs = bench.predict_all(formats.load(variant_dir), self.x)
        return verify.compare(probs, self.reference, self.y, self.task, self.accuracy_budget, self.min_agreement)


def with_fallback(make: Callable[[Path, list[str]], variant.VariantMeta], rank: Callable[[], list[tuple[str, float]]],
                  gate: Gate, out_dir: Path, max_attempts: int, error_metric: str) -> variant.VariantMeta:
    """Make an int8 variant at `out_dir`; if it misses the gate, keep the worst layers in float and retry.

    `make(dir, float_layers)` writes a variant with those layers (names as the converter knows them)
    left unquantized; `rank()` lists layers worst first with their error, and is called only when the
    first attempt fails. Retry k keeps the 2**(k-1) worst layers in float, at most `max_attempts`
    retries. The best attempt (passed, else the smallest accuracy loss, then the highest agreement)
    is saved with the attempts and the float-kept layers in kfopt.json `extra["fallback"]`.
    """
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.attempts"
    attempts: list[dict[str, Any]] = []
    ranking: list[tuple[str, float]] | None = None
    best: tuple[tuple, int] | None = None
    try:
        for attempt in range(max_attempts + 1):
            keep: list[str] = []
            try:
                if attempt:
                    ranking = rank() if ranking is None else ranking
                    keep = [name for name, _ in ranking[:min(2 ** (attempt - 1), len(ranking))]]
                    if not keep or keep == attempts[-1]["float_layers"]:
                        break  # nothing more to keep in float
                make(staging / str(attempt), keep)
                result = gate.check(staging / str(attempt))
            except Exception as exc:  # noqa: BLE001 - a failed retry must not lose the variant already made
                if not attempt:
                    raise
                attempts.append({"float_layers": keep, "passed": False, "reason": f"retry failed: {exc}"})
                break
            attempts.append({"float_layers": keep, "passed": result["passed"], "reason": result["reason"],
                             "accuracy_delta_pp": result["accuracy_delta_pp"], "agreement": result["agreement"],
                             "max_abs_error": result["max_abs_error"]})
            key = (result["passed"], result["accuracy_delta_pp"], result["agreement"], -len(keep))
            if best is None or key > best[0]:
                best = (key, len(attempts) - 1)
            if result["passed"]:
                break
        chosen = attempts[best[1]]
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(str(staging / str(best[1])), str(out_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = variant.read(out_dir)
    meta.extra["fallback"] = {
        "checked_on": f"validation split ({len(gate.y)} samples) against the float parent",
        "passed": chosen["passed"], "attempts": attempts, "chosen_attempt": best[1],
        "float_layers": chosen["float_layers"],
        "layer_error_metric": error_metric,
        "layer_errors": [{"layer": n, "error": round(e, 6)} for n, e in (ranking or [])][:20],
    }
    return variant.write(out_dir, meta)


def write_skipped(out_dir: Path, names: list[tuple[str, str, str]], reason: str, technique: str,
                  parent: str | None) -> None:
    """Skipped variants (name, format, target) with the reason, so the report shows what was not made."""
    for name, fmt, target in names:
        variant.write_skipped(Path(out_dir) / name, name, fmt, target, reason, technique=technique, parent=parent)
