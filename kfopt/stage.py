"""What every component body shares: clean failure and metrics, without importing kfp.

A component runs `with guard("train"): ...`: a KfoptError becomes one line on stderr (also written
to $KFOPT_ERROR_FILE so `kfopt run` can show it) and exit code 1 — never a traceback for a
problem the user can fix.

An optimizer or accelerator runs `with optional_stage("prune", out_dir): ...` instead: a technique
that cannot handle this model must not cost the user the rest of the run. Any error that is not
the user's to fix leaves its output folder holding one `failed` variant with the reason, prints
`kfopt prune: failed: <reason>` and lets the task succeed, so the benchmark, report and publish
run and show it. Errors in the user's input (settings, data, storage, a corrupted artifact) and a
full disk still stop the run through `guard`: every other stage would hit them too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

from kfopt import diskfull
from kfopt.errors import ArtifactError, ConfigError, DataError, KfoptError, StorageError

#: Errors that stop the run even in an optional stage: the user's input is wrong, not the technique.
STOPS_RUN = (ConfigError, DataError, StorageError, ArtifactError)
_SOURCE_LOCATION = re.compile(r"(?<!\w)(?:/[\w.+-]+)+\.(?:py|cc|h):\d+(?::\d+)?:?\s*")


@contextlib.contextmanager
def guard(stage: str) -> Iterator[None]:
    try:
        yield
    except KfoptError as exc:
        message = f"kfopt {stage}: {exc}"
        print(message, file=sys.stderr, flush=True)
        error_file = os.environ.get("KFOPT_ERROR_FILE")
        if error_file:
            with open(error_file, "a") as handle:
                handle.write(message + "\n")
        sys.exit(1)


def failure_reason(stage: str, exc: BaseException) -> str:
    """`<stage> stage: <ExceptionType>: <first line of its message>`, short enough for a table.

    Absolute source locations that converters glue into their messages (`/…/ops.py:551:1: `) are dropped.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = " ".join(_SOURCE_LOCATION.sub(" ", lines[0]).split()) if lines else "(no message)"
    return f"{stage} stage: {type(exc).__name__}: {first[:300] + '…' if len(first) > 300 else first}"


@contextlib.contextmanager
def optional_stage(stage: str, out_dir: str | Path, metrics: Any = None) -> Iterator[None]:
    """Run an optimizer/accelerator body; if it breaks, its output is one `failed` variant named `stage`.

    The body writes `out_dir` through variant.staged_dir, so nothing it half-made is left; a folder
    it completed before failing later is replaced too. The full traceback goes to stderr (the task
    log); the variant keeps the one-line reason. With `metrics` (a KFP Metrics artifact), the task
    still logs its metrics file, which keeps local caching working.
    """
    from kfopt import variant

    with guard(stage):
        try:
            yield
        except STOPS_RUN:
            raise
        except Exception as exc:  # noqa: BLE001 - any other error is this technique's failure, not the run's
            if diskfull.is_disk_full(exc):  # not the technique's fault, and every later stage would hit it
                where = getattr(exc, "filename", None) or Path(out_dir).parent
                raise diskfull.error(where, f"the {stage} stage's output", diskfull.PIPELINE_ROOT) from exc
            reason = failure_reason(stage, exc)
            traceback.print_exc(file=sys.stderr)
            try:
                with variant.staged_dir(Path(out_dir)) as tmp:
                    variant.write_failed(tmp / stage, stage, "n/a", "n/a", reason, technique=stage,
                                         error=type(exc).__name__)
            except KfoptError:  # the note cannot be written either (a full disk): that clear error stops the run
                raise
            except Exception:  # noqa: BLE001 - nor that: the original error stands
                raise exc from None
            if metrics is not None:
                log_metrics(metrics, {"failed": 1})
            print(f"kfopt {stage}: failed: {reason}", file=sys.stderr, flush=True)


def scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested metrics to the numeric scalars KFP's Metrics artifact accepts."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, f"{name}."))
    return out


def log_metrics(metrics: Any, values: dict[str, Any]) -> None:
    """Log to a KFP Metrics artifact and also write them to its path (keeps local caching working)."""
    flat = scalars(values)
    for key, value in flat.items():
        metrics.log_metric(key, value)
    os.makedirs(os.path.dirname(metrics.path) or ".", exist_ok=True)
    with open(metrics.path, "w") as handle:
        json.dump(flat, handle)
