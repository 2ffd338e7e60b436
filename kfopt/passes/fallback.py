"""The accuracy-aware fallback: any pass that can rank its layers retries with the worst kept in float.

A pass gives `with_fallback` a `make(dir, float_layers)` that writes its variant with those layers
(names as its converter knows them) left unquantized, and a `rank()` that lists layers worst first with
their error. The first attempt quantizes everything; when it misses the in-stage check, retry k keeps
the 2**(k-1) worst layers in float, at most `max_attempts` retries, none when the variant is already as
accurate as its float parent (the miss is the parent's loss). The best attempt is always kept: a pass
never ends with "no model met the goal, nothing saved".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from kfopt import variant
from kfopt.passes.check import KEY, InStageCheck


def _parents_loss(result: dict[str, Any], check: InStageCheck) -> bool:
    """True when the miss is the parent's, not the quantization's: the variant agrees well enough and is as
    accurate as its float parent, so keeping layers in float cannot bring back what the parent lost."""
    return (result["agreement"] >= check.min_agreement
            and -result["accuracy_delta_pp"] <= check.spent_pp + 1e-9 and check.spent_pp > 0)


def with_fallback(make: Callable[[Path, list[str]], variant.VariantMeta], rank: Callable[[], list[tuple[str, float]]],
                  check: InStageCheck, out_dir: Path, max_attempts: int, error_metric: str) -> variant.VariantMeta:
    """Make a variant at `out_dir`; if it misses `check`, keep the worst layers in float and retry.

    `rank()` is called only when the first attempt fails. The best attempt (passed, else the smallest
    accuracy loss, then the highest agreement) is saved with the attempts and the float-kept layers in
    kfopt.json `extra["fallback"]`, and its in-stage check in `extra["in_stage_check"]`.
    """
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.attempts"
    attempts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    ranking: list[tuple[str, float]] | None = None
    best: tuple[tuple, int] | None = None
    no_retry = None
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
                result = check.check(staging / str(attempt))
            except Exception as exc:  # noqa: BLE001 - a failed retry must not lose the variant already made
                if not attempt:
                    raise
                attempts.append({"float_layers": keep, "passed": False, "reason": f"retry failed: {exc}"})
                break
            attempts.append({"float_layers": keep, "passed": result["passed"], "reason": result["reason"],
                             "accuracy_delta_pp": result["accuracy_delta_pp"], "agreement": result["agreement"],
                             "max_abs_error": result["max_abs_error"]})
            results.append(result)
            key = (result["passed"], result["accuracy_delta_pp"], result["agreement"], -len(keep))
            if best is None or key > best[0]:
                best = (key, len(attempts) - 1)
            if result["passed"]:
                break
            if _parents_loss(result, check):
                no_retry = (f"as accurate as its float parent, which had already spent {check.spent_pp:.2f} pp: "
                            "keeping layers in float cannot bring that back")
                break
        chosen = attempts[best[1]]
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(str(staging / str(best[1])), str(out_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = variant.read(out_dir)
    meta.extra[KEY] = results[best[1]]
    meta.extra["fallback"] = {
        "checked_on": check.describe(), "budget_left_pp": round(check.budget_left_pp, 4),
        "passed": chosen["passed"], "attempts": attempts, "chosen_attempt": best[1],
        "float_layers": chosen["float_layers"], "no_retry": no_retry,
        "layer_error_metric": error_metric,
        "layer_errors": [{"layer": n, "error": round(e, 6)} for n, e in (ranking or [])][:20],
    }
    return variant.write(out_dir, meta)
