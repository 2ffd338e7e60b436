"""The distill stage's search over student width: the narrowest student that passes the in-stage check.

The space is `distill.student_width`, tried by bisection (kfopt.search.bisect_order) from the widest
(safest) width: accuracy falls as the width shrinks, so the boundary is found in about log2(n)
trainings, and a search stopped by `search.time_budget_s` still has its widest student on record.
Every student is trained on the same teacher outputs, computed once by the caller before the search.

The objective is the student's parameter count, not a timed latency. Bisection already assumes that
narrower is faster, and the count is exact, while timing the fp32 student here would measure noise: on
the bundled models a call takes microseconds, the stage shares its cores with the other optimizer
stages, and the student is not what gets served anyway; its int8 children are, and the benchmark
times those.

A point passes when the in-stage check passes *and* its accuracy-delta estimate is within the budget
left. The check alone rejects only a loss confidently beyond the budget, so on a small validation split
it lets through students that lose more than the budget, and a search that keeps the narrowest passing
point would pick exactly those (the most aggressive point the noise hides); the gate then rejects it on
the test split, and the run loses a student that a wider width would have given.

If no width passes, the widest student is kept with its check on record: the benchmark's gate decides
on it (and rejects one whose check failed), and the report still shows how close it came.

Only the kept student is returned; the others are dropped (the stage writes one `student` variant).
Framework-free: the caller's `train(width)` builds and trains one student in Keras or torch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

from kfopt import search as search_mod
from kfopt.errors import ModelError
from kfopt.optimize import recipe

KNOB, OBJECTIVE = "student_width", "parameters"
RULE = ("narrowest student (fewest parameters) that passes the in-stage check with its accuracy-delta estimate "
        "within the budget left; bisection from the widest")
MONITOR = "val_loss"  # what early stopping watches, in every student's history (kfopt.optimize.recipe)


@dataclasses.dataclass
class Student:
    """One trained candidate."""

    model: Any
    parameters: int
    history: dict[str, list[float]]  # per epoch: val_accuracy, learning_rate, ...
    val_probs: np.ndarray  # its outputs on the in-stage check's validation rows


def search(widths: Sequence[float], train: Callable[[float], Student], ctx, max_epochs: int,
           **record_extra: Any) -> tuple[float, Student, dict[str, Any]]:
    """(kept width, its student, the search record for kfopt.json `extra["search"]`).

    `widths` is ordered widest first (kfopt.optimize.checks.student_widths). A width whose student cannot
    be built (a ModelError naming the layer) is a failed point; if none can be built, that error is raised.
    """
    found = ctx.search(KNOB, OBJECTIVE, RULE)
    students: dict[float, Student] = {}
    errors: list[ModelError] = []

    def try_point(width: float) -> bool:
        started = time.monotonic()
        point = found.add(width, width=width)
        try:
            student = train(width)
        except ModelError as exc:
            errors.append(exc)
            point.update({"passed": False, "reason": f"could not be made: {exc}",
                          "seconds": round(time.monotonic() - started, 2)})
            return False
        result = ctx.check.compare(student.val_probs)
        students[width] = student
        passed, reason = _verdict(result, ctx.check.budget_left_pp)
        point.update({"passed": passed, "check_passed": bool(result["passed"]), "reason": reason,
                      "accuracy_delta_pp": result["accuracy_delta_pp"], "agreement": result["agreement"],
                      OBJECTIVE: student.parameters, **recipe.summary(student.history, MONITOR, max_epochs),
                      "seconds": round(time.monotonic() - started, 2)})
        return passed

    search_mod.bisect_order(list(widths), try_point, found)
    if not students:
        raise errors[0]
    best = found.best()
    kept = best["width"] if best else max(students)
    note = {} if best else {"kept_failing": f"no width passed; the widest made ({kept:g}) is kept with its check on "
                                            "record, and the benchmark's gate decides on it"}
    record = found.record(best, kept=str(kept), checked_on=ctx.check.describe(), **note, **record_extra)
    return kept, students[kept], record


def _verdict(result: dict[str, Any], budget_left_pp: float) -> tuple[bool, str]:
    """(passed for the search, why): the check's verdict, and the estimate within the budget left."""
    if not result["passed"]:
        return False, result["reason"]
    if result["accuracy_delta_pp"] < -budget_left_pp:
        return False, (f"the check passed ({result['reason']}), but the estimate {result['accuracy_delta_pp']:+.2f} pp "
                       f"is beyond the {budget_left_pp:g} pp budget left: the search keeps only a width whose "
                       "estimate is within it")
    return True, result["reason"]
