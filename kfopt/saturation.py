"""When a batch sweep stops: double the batch until throughput stops rising (Triton Model Navigator's rule).

Model Navigator profiles batch sizes 1, 2, 4, ... and calls a step *saturated* when its throughput is below
the best so far times (1 + throughput_cutoff_threshold) (`is_throughput_saturated`,
model_navigator/commands/performance/utils.py); its backoff policy keeps profiling for a few saturated steps
in a row, the count reset by any step that is not saturated, because a runtime may still pick faster kernels
at a larger batch (`ThroughputSaturatedProfilingStopStrategy`). Its defaults
(model_navigator/configuration/constants.py) are DEFAULT_THROUGHPUT_CUTOFF_THRESHOLD = 0.05 and
DEFAULT_THROUGHPUT_BACKOFF_LIMIT = 2, and so are kfopt's (`bench.saturation_gain`, `bench.saturation_steps`):
a doubling must raise throughput by more than 5 % over the best so far, and the sweep stops after 2 doublings
in a row that do not. The best batch is the last step that did raise it: the smallest batch at the saturated
throughput, since a larger batch within noise of it only adds latency.

Pure functions of the measured curve, so the rule is tested on constructed curves (tests/test_threads_batch.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

GAIN = 0.05
STEPS = 2


def doubling(max_batch: int, accepted: Iterable[int] | None = None) -> list[int]:
    """1, 2, 4, ... up to `max_batch` (and `max_batch` itself); with `accepted`, only the batches a
    static-shape program runs at."""
    out, bs = [], 1
    while bs < max_batch:
        out.append(bs)
        bs *= 2
    out.append(max_batch)
    return [b for b in out if accepted is None or b in set(accepted)]


def best_and_stop(throughputs: Sequence[float], gain: float = GAIN, steps: int = STEPS) -> tuple[int | None, bool]:
    """(index of the best step, whether the sweep stops here) for the throughputs measured so far, in order."""
    best, misses = None, 0
    for i, value in enumerate(throughputs):
        if best is not None and value <= throughputs[best] * (1 + gain):
            misses += 1
        else:
            best, misses = i, 0
    return best, misses >= steps
