"""Local runs that were killed: tell them from live ones, tidy them, and let the next run resume.

Resuming needs no bookkeeping of its own. kfp.local records a task in its cache
(runs/.kfp-cache) only after the task succeeded, and atomically; every stage writes its artifact
through kfopt.variant.staged_dir, so a stage killed mid-write leaves only a hidden
`.<name>.partial-*` folder, which no cache entry and no later task points to. The next run with
the same settings therefore reuses every finished stage and redoes the killed one from its inputs.

What is left to do here: know which run folders belong to a dead process, remove what their
killed writers left, and say so. A live run holds an flock on `running.lock` in its folder; the
kernel drops it when the process dies, however it dies, so a lock file nobody holds marks a killed
run. Such a folder keeps its finished artifacts (the cache entries point at them) and gets
`stopped.txt`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import IO

RUN_LOCK = "running.lock"
STOPPED = "stopped.txt"
ERROR_FILE = ".stage-errors.txt"  # stages append their one-line errors here (KFOPT_ERROR_FILE)


def hold(run_dir: Path) -> IO:
    """Create run_dir/running.lock already locked (locked under a temporary name, then renamed in).

    A lock file that is visible is therefore always one a live process locked first: a run that
    is starting is never mistaken for a killed one.
    """
    tmp = run_dir / f".{RUN_LOCK}.{os.getpid()}"
    handle = open(tmp, "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    os.replace(tmp, run_dir / RUN_LOCK)
    return handle


def release(handle: IO, run_dir: Path) -> None:
    (run_dir / RUN_LOCK).unlink(missing_ok=True)
    handle.close()


def _take_abandoned(run_dir: Path) -> IO | None:
    """The lock of a run whose process is gone, now held by us; None if it is alive or has no lock."""
    try:
        handle = open(run_dir / RUN_LOCK)  # read-only: never creates it; flock works on any open file
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # someone holds it: that run is alive
        handle.close()
        return None
    return handle


def running(run_dir: Path) -> bool:
    return (run_dir / RUN_LOCK).exists() and not stopped(run_dir)


def stopped(run_dir: Path) -> bool:
    """Whether the run in run_dir was killed before it finished (tidied already or not)."""
    if (run_dir / STOPPED).exists():
        return True
    handle = _take_abandoned(run_dir)
    if handle is None:
        return False
    handle.close()
    return True


def leftovers(run_dir: Path) -> list[Path]:
    """What killed writers leave: staged_dir's `.x.partial-*` folders and storage's `.x.*.tmp` files."""
    found = [p for p in run_dir.rglob(".*.partial-*") if ".partial-" not in str(p.parent)]
    return found + [p for p in run_dir.rglob(".*.tmp") if ".partial-" not in str(p.parent)]


def recover(runs_dir: Path) -> list[str]:
    """Tidy every run under `runs_dir` that was killed before it finished; one message per run."""
    messages, alive = [], False
    for run_dir in sorted(p for p in Path(runs_dir).glob("*") if (p / RUN_LOCK).exists()):
        handle = _take_abandoned(run_dir)
        if handle is None:
            alive = True
            continue
        with handle:
            found = leftovers(run_dir)
            for path in found:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            (run_dir / ERROR_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a full disk: the run lock still marks it, next time then
                (run_dir / STOPPED).write_text("This run was stopped before it finished (its process was killed). "
                                               "Run `kfopt run` again with the same settings: its finished stages "
                                               "come from the cache.\n")
            (run_dir / RUN_LOCK).unlink(missing_ok=True)
        messages.append(f"kfopt: run {run_dir.name} was stopped before it finished; removed {len(found)} "
                        "partial output(s) of its killed stage(s); the stages it finished come from the cache")
    cache_root = Path(runs_dir) / ".kfp-cache"
    if not alive and cache_root.is_dir():  # a cache entry being written when its writer died
        for tmp in cache_root.glob(".kfp_cache_*.tmp"):
            tmp.unlink(missing_ok=True)
    return messages
