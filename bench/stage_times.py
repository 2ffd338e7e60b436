"""Seconds per pipeline stage of a local run, read from what the run recorded.

A local run (kfopt.local_run) keeps kfp.local's whole log in `<run>/pipeline.log`, where every task
starts with "Executing task 'NAME'" and ends with "Task 'NAME' finished with status ...", each line
stamped HH:MM:SS.mmm (a cached task has neither line: it did not run). A task's time is from its start line to its end line: the
component's Python process, kfopt's stage and kfp.local's handling of its outputs, which is what a
user waits for. Times wrap at midnight; a task never runs 24 hours here, so a negative gap is one
day's wrap. A task that has no end line (the run failed in it) is reported as such, without a time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d+) - INFO - (Executing task|Task) '([^']+)'(.*)$")
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def _seconds(h: str, m: str, s: str, frac: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + float(f"0.{frac}")


def parse(log_text: str) -> list[dict[str, Any]]:
    """[{'task', 'seconds' (None if it never ended), 'status'}] in the order the tasks started."""
    started: dict[str, float] = {}
    tasks: list[dict[str, Any]] = []
    for raw in log_text.splitlines():
        match = _LINE.match(_COLOURS.sub("", raw))
        if not match:
            continue
        h, m, s, frac, kind, name, rest = match.groups()
        at = _seconds(h, m, s, frac)
        if kind == "Executing task":
            started[name] = at
            tasks.append({"task": name, "seconds": None, "status": "running"})
        elif name in started and "finished with status" in rest:
            gap = at - started.pop(name)
            row = next(t for t in reversed(tasks) if t["task"] == name)
            row["seconds"] = round(gap + 86400 if gap < 0 else gap, 1)
            row["status"] = rest.split("status", 1)[-1].strip()
    return tasks


def of_run(run_dir: Path) -> list[dict[str, Any]]:
    log = Path(run_dir) / "pipeline.log"
    return parse(log.read_text(errors="replace")) if log.exists() else []


def slowest(tasks: list[dict[str, Any]], n: int = 5) -> list[dict[str, Any]]:
    return sorted((t for t in tasks if t["seconds"] is not None), key=lambda t: -t["seconds"])[:n]
