"""Time per stage of a local run, read from kfp.local's own log lines.

kfp.local runs the tasks one after another and logs `HH:MM:SS.mmm - INFO - Executing task 'x'` and
`Task 'x' finished with status SUCCESS`; the difference is the task's wall time, Python and
TensorFlow start-up included (what a user waits for). A task taken from the cache is marked so and
has no time. On a cluster the tasks run in parallel and the Kubeflow UI shows each one's duration;
this is the local view, where "which stage was slowest" is the question.
"""

from __future__ import annotations

import re
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) - INFO - (?:Executing task '([^']+)'|"
                   r"Task '([^']+)' finished with status (\w+))")
_HIT = re.compile(r"Task '?([^' ]+)'? cache hit")
_DAY = 24 * 3600.0


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def from_log(text: str) -> list[dict[str, Any]]:
    """[{"stage", "seconds" (None when cached), "status"}] in the order the tasks started."""
    started: dict[str, float] = {}
    out: dict[str, dict[str, Any]] = {}
    for raw in text.splitlines():
        line = _ANSI.sub("", raw)
        hit = _HIT.search(line)
        if hit:
            out[hit.group(1)] = {"stage": hit.group(1), "seconds": None, "status": "cached"}
            continue
        found = _LINE.match(line)
        if not found:
            continue
        at = _seconds(*found.group(1, 2, 3, 4))
        if found.group(5):
            started[found.group(5)] = at
            out.setdefault(found.group(5), {"stage": found.group(5), "seconds": None, "status": "running"})
        elif found.group(6) in started:
            took = (at - started[found.group(6)]) % _DAY  # a run across midnight
            out[found.group(6)] = {"stage": found.group(6), "seconds": round(took, 1),
                                   "status": found.group(7).lower()}
    return list(out.values())


def slowest(times: list[dict[str, Any]], n: int = 5) -> str:
    """One line: the n slowest stages with their seconds, and how many came from the cache."""
    timed = sorted((t for t in times if t["seconds"] is not None), key=lambda t: -t["seconds"])
    cached = sum(t["status"] == "cached" for t in times)
    total = sum(t["seconds"] for t in timed)
    head = ", ".join(f"{t['stage']} {t['seconds']:.1f} s" for t in timed[:n]) or "none timed"
    return (f"Time per stage (slowest first, {total:.0f} s in {len(timed)} stage{'' if len(timed) == 1 else 's'}"
            + (f", {cached} from the cache" if cached else "") + f"): {head}")


def table(times: list[dict[str, Any]]) -> list[list[str]]:
    """Rows stage | seconds | share of the timed total, in the order the stages ran."""
    total = sum(t["seconds"] or 0 for t in times) or 1.0
    return [[t["stage"], "cached" if t["status"] == "cached" else f"{t['seconds']:.1f}" if t["seconds"] is not None
             else t["status"], f"{100 * (t['seconds'] or 0) / total:.0f}%"] for t in times]

