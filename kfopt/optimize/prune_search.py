"""The prune stage's search over sparsity, shared by its three pruners (tfmot, torch structured, torch global).

Accuracy falls as sparsity rises, so the space (`prune.sparsities`, sorted safest first) is searched by
bisection (kfopt.search.bisect_order): the most aggressive sparsity that passes the in-stage check is
found in about log2(n) fine-tunings, and no new one starts once the time budget is spent. Each point
is a real variant written in a scratch folder (the pruner's `make_point`), checked against the
baseline there; only the kept one moves to the stage's output and gets the CHAIN after it, so the
pipeline does not grow with the space. Every point tried, with its check, objective and seconds, goes
into the kept variant's kfopt.json `extra["search"]`.

A point passes when its in-stage check passes *and* its accuracy-delta estimate is within the budget
left (as for the distill stage's width search, kfopt.optimize.student_search): the check rejects only a
loss confidently beyond the budget, so on a small validation split it lets through points that lose
more, and a search keeping the most aggressive passing point would pick exactly those.

When no point passes, the safest one tried is kept: its failed check is on record (and the gate, which
no stage can skip, rejects it), and the record says so.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from kfopt import search as search_mod
from kfopt import variant
from kfopt.passes.check import KEY as CHECK_KEY

NONE_PASSED = ("no sparsity passed the in-stage check: the safest one tried is kept, its failed check on record "
               "(the gate rejects it)")


def verdict(check: dict[str, Any]) -> tuple[bool, str]:
    """(passed for the search, why) from a recorded in-stage check: its verdict, and the estimate within the
    budget left."""
    if not check["passed"]:
        return False, check["reason"]
    if check["accuracy_delta_pp"] < -check["budget_left_pp"]:
        return False, (f"the check passed ({check['reason']}), but the estimate {check['accuracy_delta_pp']:+.2f} pp is "
                       f"beyond the {check['budget_left_pp']:g} pp budget left: the search keeps only a sparsity whose "
                       "estimate is within it")
    return True, check["reason"]


def kept(search: search_mod.Search, noise: float = 0.0) -> dict[str, Any] | None:
    """The passing point best in the objective; points within `noise` (relative) of it count as equally good
    and the most aggressive of them is kept (a latency 3% lower at a milder sparsity is timing noise)."""
    best = search.best()
    if best is None or not noise:
        return best
    limit = float(best[search.objective]) * (1 + noise)
    return max((p for p in search.points if p.get("passed") and float(p[search.objective]) <= limit),
               key=lambda p: float(p["setting"]))


def run(space: Sequence[float], search: search_mod.Search, make_point: Callable[[float, Path], dict[str, Any]],
        name: Callable[[float], str], points_dir: Path, out_dir: Path, noise: float = 0.0) -> variant.VariantMeta:
    """Search `space`; return the kept variant, moved to `out_dir / name(kept)` with the search on record.

    `make_point(sparsity, folder)` writes a checked variant (its in-stage check recorded) in `folder` and
    returns the point's measured fields (the search's objective among them) for the record; `noise` is
    the objective's relative measurement noise (see `kept`).
    """
    folders: dict[str, Path] = {}

    def try_point(sparsity: float) -> bool:
        start = time.perf_counter()
        folder = Path(points_dir) / name(sparsity)
        fields = make_point(sparsity, folder)
        check = variant.read(folder, verify=False).extra[CHECK_KEY]
        passed, reason = verdict(check)
        point = search.add(sparsity, passed=passed, check_passed=bool(check["passed"]), reason=reason,
                           accuracy_delta_pp=round(check["accuracy_delta_pp"], 4),
                           agreement=round(check["agreement"], 4), **fields, seconds=round(time.perf_counter() - start, 2))
        folders[point["setting"]] = folder
        return point["passed"]

    search_mod.bisect_order(sorted(float(s) for s in space), try_point, search)
    chosen = kept(search, noise)
    keep = chosen or search.points[0]  # bisection tries the safest first
    final = Path(out_dir) / folders[keep["setting"]].name
    shutil.move(str(folders[keep["setting"]]), str(final))
    shutil.rmtree(points_dir, ignore_errors=True)
    meta = variant.read(final)
    meta.extra[search_mod.KEY] = search.record(keep, **({} if chosen else {"kept_because": NONE_PASSED}))
    return variant.write(final, meta)
