"""What every component body shares: clean failure and metrics, without importing kfp.

A component runs `with guard("train"): ...`: a KfoptError becomes one line on stderr (also written
to $KFOPT_ERROR_FILE so `kfopt run` can show it) and exit code 1 — never a traceback for a
problem the user can fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Iterator

from kfopt.errors import KfoptError


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
