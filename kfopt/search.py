"""A technique's search over one knob, bounded by a time budget, with every point it tried on record.

Accuracy-aware tuning, the way Intel Neural Compressor and Olive do it: a pass with a knob (ORT int8
settings, pruning sparsity, student width) makes a candidate per setting, checks it against the
baseline (kfopt.passes.check.InStageCheck) and measures what it is searched for (latency or size),
then keeps the best setting that passed. A search never starts a new point once its time budget
(`search.time_budget_s`, a pipeline parameter, given to each search of a stage) is spent; the points
not tried are named.

The record goes into the kept variant's kfopt.json as `extra["search"]`, the report draws it (a
table and a plot of the points tried, the kept one marked), and the same shape serves every pass:

    {"knob": "sparsity", "objective": "p50_ms", "rule": "...", "time_budget_s": 120, "seconds": 40.2,
     "points": [{"setting": "0.5", "passed": true, "accuracy_delta_pp": -0.28, "p50_ms": 0.41,
                 "seconds": 12.1, ...}, ...],
     "chosen": "0.5", "not_tried": ["0.9"], "stopped": "time budget spent"}

Bisection over an ordered space (`bisect_order`) is how sparsity and width are searched: accuracy
falls as sparsity rises (or width shrinks), so the most aggressive passing setting is found in
log2(n) trainings, not n.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

from kfopt.errors import ConfigError

KEY = "search"  # where kfopt.json records it


def check_budget(seconds: float) -> None:
    if not seconds > 0:
        raise ConfigError(f"search.time_budget_s must be > 0 seconds (the time one search of a stage may spend on a "
                          f"technique's knob), got {seconds}.")


@dataclasses.dataclass
class Search:
    """The points one search tried, in order, and the clock it runs against."""

    knob: str  # what is searched: "sparsity", "student_width", "ort_setting"
    objective: str  # the measured field the kept point is best in: "p50_ms", "size_bytes", ...
    rule: str  # how the kept point is chosen, in words (for the report)
    time_budget_s: float
    points: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    not_tried: list[str] = dataclasses.field(default_factory=list)
    stopped: str = "space exhausted"
    started: float = dataclasses.field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        check_budget(self.time_budget_s)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def spent(self) -> bool:
        """True once no new point may start (the first point always runs: a search keeps something)."""
        return bool(self.points) and self.seconds >= self.time_budget_s

    def add(self, setting: Any, **fields: Any) -> dict[str, Any]:
        """Record a tried point; `fields` should hold `passed`, the objective and what the check said."""
        point = {"setting": str(setting), **fields}
        self.points.append(point)
        return point

    def skip(self, settings: Sequence[Any], why: str = "time budget spent") -> None:
        self.not_tried.extend(str(s) for s in settings)
        if settings:
            self.stopped = why

    def best(self, key: Callable[[dict[str, Any]], float] | None = None) -> dict[str, Any] | None:
        """The passing point with the smallest objective (or `key`), None when nothing passed."""
        passing = [p for p in self.points if p.get("passed")]
        if not passing:
            return None
        return min(passing, key=key or (lambda p: float(p[self.objective])))

    def record(self, chosen: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return {"knob": self.knob, "objective": self.objective, "rule": self.rule,
                "time_budget_s": self.time_budget_s, "seconds": round(self.seconds, 2), "points": self.points,
                "chosen": None if chosen is None else chosen["setting"], "not_tried": self.not_tried,
                "stopped": self.stopped, **extra}


def bisect_order(space: Sequence[Any], try_point: Callable[[Any], bool], search: Search) -> None:
    """Try `space` (ordered from safest to most aggressive) by bisection, calling `try_point(setting)` ->
    passed, until the boundary between passing and failing is found or the time budget is spent.

    The safest setting goes first, so a search that runs out of time still has its best bet on record;
    the points never tried are recorded in `search.not_tried`.
    """
    lo, hi = 0, len(space) - 1  # untried candidates for the most aggressive passing setting
    nxt = 0
    while lo <= hi:
        if search.spent():
            search.skip([space[j] for j in range(lo, hi + 1)])
            return
        if try_point(space[nxt]):
            lo = nxt + 1
        else:
            hi = nxt - 1
        nxt = (lo + hi + 1) // 2
