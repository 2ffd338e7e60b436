"""Disk full, said once and plainly: which place is full, what was being written, what to change.

A full disk shows up in many shapes: OSError ENOSPC from Python, EDQUOT on a quota, EFBIG past a
file-size limit, or a TensorFlow ResourceExhaustedError whose message carries the OS's "No space
left on device". `is_disk_full` recognises all of them (also when chained as a cause), so every
writer can turn them into one StorageError instead of a traceback that reads like a bug.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from kfopt.errors import StorageError

ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_MESSAGES = tuple(os.strerror(code) for code in ERRNOS)  # "No space left on device", ...
# What to point elsewhere, by where the write went.
PIPELINE_ROOT = "the pipeline root (kfopt run --runs-dir; on a cluster, the run's pipeline root)"
DOWNLOADS = "TMPDIR (kfopt downloads gs:// inputs into a temporary folder)"
STORAGE = "the setting that names this location (publish.registry for the model registry)"


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) means the disk or a size limit is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ERRNOS:
            return True
        if not isinstance(exc, OSError) and any(text in str(exc) for text in _MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _mount_point(path: Path) -> Path:
    """The mount point holding `path` (the place the user has to free), as far as it exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def error(path: Path | str, what: str, setting: str) -> StorageError:
    """The one message for a full disk while writing `what` at `path`."""
    return StorageError(f"No space left on {_mount_point(Path(path))} while writing {what}; free space there "
                        f"or point {setting} elsewhere")
