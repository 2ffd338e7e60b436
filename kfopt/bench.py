"""The benchmark harness: every variant through the runner registry, each in its own process.

For each variant a fresh worker process (`python -m kfopt.bench`) loads the runner, predicts the
test split (for accuracy and verification), then, at each batch size it times, predicts the test split
again in calls of exactly that batch (every test sample, the last call filled up with repeated samples whose
answers are dropped; at most VERIFY_CALLS calls) so
that a runtime that answers correctly at one batch size and wrongly at another is caught at the batch
it is chosen for (`verification_by_batch`), then times it: warm-up, then timed runs until the 95%
confidence interval of the median is within `target_ci` of it, or `max_seconds` pass. A separate process per variant keeps one runtime's thread pools and compiled graphs from
leaking into another's figures, and gives a clean peak-memory reading.

Every variant is timed at the first of `threads`; then each target's finalists (kfopt.finalists) are timed
again at the serving node's cores and, for a throughput objective, swept over batch sizes (kfopt.saturation),
each in a worker of its own, every batch verified like the first ones. A row keeps today's keys (`latency`,
`verification_by_batch`: the first thread count) and adds `by_threads`: per thread count its `latency`,
`verification_by_batch` and `sweep`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kfopt import fingerprint, variant, verify
from kfopt.data import dataset as ds_mod


def median_ci(samples: np.ndarray) -> float:
    """Half-width of the distribution-free 95% CI of the median, relative to the median."""
    n = len(samples)
    if n < 6:
        return math.inf
    s = np.sort(samples)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, int(math.floor(n / 2 - half))), min(n - 1, int(math.ceil(n / 2 + half)))
    med = float(np.median(s))
    return float((s[hi] - s[lo]) / 2 / med) if med > 0 else math.inf


def time_calls(fn: Callable[[], Any], *, warmup: int, min_runs: int, max_seconds: float,
               target_ci: float) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while True:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if len(times) >= min_runs and (time.perf_counter() > deadline or
                                       (len(times) % 10 == 0 and median_ci(np.array(times)) <= target_ci)):
            break
        if len(times) >= 5 and time.perf_counter() > deadline + max_seconds:
            break  # a very slow variant: stop at 2× the limit with fewer samples, recorded below
    arr = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()), "std_ms": float(arr.std()),
            "samples": len(arr), "ci95_rel": median_ci(arr / 1e3)}


def sizes(variant_dir: Path, meta: variant.VariantMeta) -> dict[str, int]:
    blobs = [(Path(variant_dir) / rel).read_bytes() for rel in sorted(meta.files)]
    return {"size_bytes": sum(len(b) for b in blobs),
            "size_gzip_bytes": len(gzip.compress(b"".join(blobs), compresslevel=9, mtime=0))}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def predict_all(runner, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([runner.predict(x[i:i + batch]) for i in range(0, len(x), batch)])


#: At most this many calls verify one batch size: the whole test split of the bundled sets (360 rows) at
#: every batch size, batch 1 included; a sample of the first 512 rows at batch 1 of a larger split.
VERIFY_CALLS = 512


def batch_rows(n: int, bs: int) -> int:
    """How many leading test samples the verification at batch `bs` covers: all `n`, in calls of exactly `bs`
    (a static-shape program at 64 must not drop the 360 % 64 remainder), at most VERIFY_CALLS calls."""
    return min(n, bs * VERIFY_CALLS)


def predict_at_batch(runner, x: np.ndarray, bs: int) -> np.ndarray:
    """Predictions of the first `batch_rows(len(x), bs)` samples, every call exactly `bs` samples: the last
    call is filled up with its own samples repeated, and their answers are dropped."""
    rows = batch_rows(len(x), bs)
    out = []
    for i in range(0, rows, bs):
        chunk = x[i:min(i + bs, rows)]
        out.append(runner.predict(np.resize(chunk, (bs, *x.shape[1:])).astype(x.dtype))[:len(chunk)])
    return np.concatenate(out)


def batch_predictions_path(predictions_out: Path, bs: int) -> Path:
    return Path(predictions_out).with_name(f"{Path(predictions_out).stem}.batch{bs}.npy")


def _memory_limit_mb() -> float:
    """This process's memory ceiling: the cgroup v2 limit (a pod's memory limit), else the machine's RAM."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            return int(limit) / 2**20
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


class _Timer:
    """Verifies, then times, one runner at one batch size after another (inside the worker)."""

    def __init__(self, runner, x: np.ndarray, predictions_out: Path, timing: dict[str, float]):
        self.runner, self.x, self.out, self.timing = runner, x, predictions_out, timing
        self.rng = np.random.default_rng(0)

    def __call__(self, bs: int) -> dict[str, float]:
        answers = predict_at_batch(self.runner, self.x, bs)
        batch = self.x[self.rng.choice(len(self.x), size=bs, replace=bs > len(self.x))]
        stats = time_calls(lambda: self.runner.predict(batch), **self.timing)
        stats["throughput"] = bs / (stats["p50_ms"] / 1e3)
        np.save(batch_predictions_path(self.out, bs), answers)  # only for a batch that was timed: it is verified
        return stats


def sweep_batches(timer: Callable[[int], dict[str, float]], latency: dict[str, Any], known: dict[str, Any],
                  max_batch: int, gain: float, steps: int, accepted: list[int] | None = None) -> dict[str, Any]:
    """Batch 1, 2, 4, ... up to `max_batch` until throughput saturates (kfopt.saturation), the process nears
    its memory limit, or a batch fails; batches in `known` are not timed again. New timings go into `latency`."""
    from kfopt import saturation

    points: list[dict[str, Any]] = []
    stopped = f"reached batch {max_batch}, the objective's largest"
    ceiling = 0.8 * _memory_limit_mb()
    for bs in saturation.doubling(max_batch, accepted):
        stats = known.get(str(bs)) or latency.get(str(bs))
        if stats is None:
            try:
                stats = latency[str(bs)] = timer(bs)
            except Exception as exc:  # noqa: BLE001 - out of memory or a runtime's limit: the sweep ends below it
                lines = str(exc).strip().splitlines()
                stopped = f"batch {bs} failed: {lines[-1] if lines else type(exc).__name__}"
                break
        points.append({"batch": bs, "throughput": stats["throughput"], "p50_ms": stats["p50_ms"]})
        best, stop = saturation.best_and_stop([p["throughput"] for p in points], gain, steps)
        if stop:
            stopped = (f"saturated: {steps} doubling(s) in a row raised throughput by at most {gain:.0%} over "
                       f"batch {points[best]['batch']}")
            break
        if _rss_mb() > ceiling:
            stopped = f"peak memory {_rss_mb():.0f} MiB, past 80% of the {ceiling / 0.8:.0f} MiB limit"
            break
    best, _ = saturation.best_and_stop([p["throughput"] for p in points], gain, steps)
    return {"points": points, "best_batch": None if best is None else points[best]["batch"], "stopped": stopped,
            "max_batch": max_batch, "gain": gain, "steps": steps}


def measure_variant(variant_dir: Path, dataset_dir: Path, batch_sizes: list[int], threads: int,
                    warmup: int, min_runs: int, max_seconds: float, target_ci: float,
                    predictions_out: Path, evaluate: bool = True, sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs inside the worker process. `evaluate`: predict the whole test split (accuracy, verification);
    `sweep`: kfopt.bench.sweep_batches' settings (max_batch, gain, steps, known)."""
    from kfopt import formats

    rss_before = _rss_mb()
    runner = formats.load(variant_dir, threads=threads or None)
    meta = runner.meta
    x, y = ds_mod.read(dataset_dir).split("test")
    result: dict[str, Any] = {"latency": {}}
    if evaluate:
        probs = predict_all(runner, x)
        np.save(predictions_out, probs)
        result.update(verify.quality(probs, y, meta.task))
    timer = _Timer(runner, x, predictions_out, {"warmup": warmup, "min_runs": min_runs,
                                                 "max_seconds": max_seconds, "target_ci": target_ci})
    accepted = getattr(runner, "accepted_batches", None)  # a static-batch program runs only at its batch
    if accepted is not None:
        result["not_timed"] = {str(bs): f"the model runs only at batch {', '.join(map(str, accepted))}"
                               for bs in batch_sizes if bs not in accepted}
        batch_sizes = sorted(set(accepted)) if evaluate else [bs for bs in batch_sizes if bs in accepted]
    for bs in batch_sizes:
        result["latency"][str(bs)] = timer(bs)
    if sweep:
        result["sweep"] = sweep_batches(timer, result["latency"], sweep.get("known") or {}, sweep["max_batch"],
                                        sweep["gain"], sweep["steps"], accepted)
    if hasattr(runner, "runtime_config"):  # what the runtime ran with, read back (OpenVINO: threads, precision)
        result["runtime_config"] = runner.runtime_config
    result["peak_rss_mb"] = _rss_mb()
    result["load_rss_mb"] = result["peak_rss_mb"] - rss_before
    return result


def _by_batch(pred_path: Path, latency: dict[str, Any], base: np.ndarray, y: np.ndarray, task: str,
              accuracy_budget: float, min_agreement: float, confidence: float) -> dict[str, Any]:
    """The verification at each timed batch size, on the rows predicted at that batch (kfopt.verify.compare
    against the baseline's predictions of the same rows); the batch files are removed once read."""
    out = {}
    for bs in latency:
        path = batch_predictions_path(pred_path, int(bs))
        probs = np.load(path)
        path.unlink()
        rows = len(probs)
        which = f"all {rows}" if rows == len(y) else f"the first {rows} of {len(y)}"
        out[bs] = {**verify.compare(probs, base[:rows], y[:rows], task, accuracy_budget, min_agreement, confidence),
                   "samples": rows, "of": int(len(y)),
                   "rows": f"{which} test samples, {-(-rows // int(bs))} calls of batch {bs}"}
    return out


def _run_worker(variant_dir: Path, dataset_dir: Path, settings: dict[str, Any], predictions_out: Path,
                timeout: float) -> dict[str, Any]:
    args = {"variant_dir": str(variant_dir), "dataset_dir": str(dataset_dir), "predictions_out": str(predictions_out),
            **settings}
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        proc = subprocess.run([sys.executable, "-m", "kfopt.bench", json.dumps(args), out.name],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return {"status": "failed", "reason": lines[-1] if lines else f"worker exited with {proc.returncode}"}
        return {"status": "ok", **json.loads(Path(out.name).read_text())}


def run(variant_roots: list[Path], dataset_dir: Path, out_dir: Path, *, baseline_dir: Path,
        batch_sizes: list[int], threads: int | tuple[int, ...] = (1,), warmup: int = 20, min_runs: int = 30, max_seconds: float = 2.0,
        target_ci: float = 0.02, accuracy_budget: float = 0.5, min_agreement: float = 0.97, confidence: float = 0.95,
        targets: list[str] | None = None, objectives: dict[str, str] | None = None, deployment: str = "",
        finalists: int = 2, saturation_gain: float = 0.05, saturation_steps: int = 2,
        hardware: str = "cpu", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Benchmark every variant found under `variant_roots` whose format runs on `hardware`.

    Every variant is timed at `threads[0]`; with `targets`, each target's `finalists` fastest verified variants
    also at the serving node's cores (`deployment`'s `targets`, this node's without one) and the other thread
    counts, and swept over batch sizes for a throughput objective (kfopt.finalists). Without `targets`, only
    `threads[0]`.

    Variants needing other hardware are left for the benchmark task on that pool; variants that were
    skipped upstream keep their reason; a stage that failed upstream is one `failed` row (in the cpu
    benchmark, which every deployment runs) with its error. Writes results.json (+ predictions/) into out_dir.
    """
    from kfopt import finalists as finalists_mod
    from kfopt import formats
    from kfopt.config import thread_counts

    counts = thread_counts(threads)
    settings = {"batch_sizes": batch_sizes, "threads": counts, "warmup": warmup, "min_runs": min_runs,
                "max_seconds": max_seconds, "target_ci": target_ci}
    worker_settings = {**settings, "threads": counts[0]}
    plan = finalists_mod.Plan.make(targets or [], objectives, counts, deployment, hardware, finalists,
                                   saturation_gain, saturation_steps)
    env = fingerprint.collect()
    results: list[dict[str, Any]] = []
    with variant.staged_dir(Path(out_dir)) as tmp:
        (tmp / "predictions").mkdir()
        base_meta = variant.read(baseline_dir)
        y = ds_mod.read(dataset_dir).split("test")[1]
        base: dict[str, Any] = {}

        def baseline_probs() -> np.ndarray:
            """Evaluated once, and only if something here is measured against it."""
            path = tmp / "predictions" / "baseline.npy"
            if not base and path.exists():  # the baseline was measured as a row already
                base.update({"status": "ok", "accuracy": verify.quality(np.load(path), y, base_meta.task)["accuracy"]})
            if not base:
                base.update(_run_worker(baseline_dir, dataset_dir, {**worker_settings, "batch_sizes": []}, path, 600))
                if base["status"] != "ok":
                    raise RuntimeError(f"The baseline could not be evaluated: {base['reason']}")
            return np.load(path)

        seen, dirs = set(), {}
        missing = formats.device_missing(hardware, env["accelerator"]) if hardware != "cpu" else None
        for root in variant_roots:
            for vdir in variant.discover(Path(root)):
                meta = variant.read(vdir, verify=False)
                if meta.name in seen:
                    continue
                seen.add(meta.name)
                fmt = formats.FORMATS.get(meta.format)
                if fmt is not None and hardware not in fmt.hardware or meta.failed and hardware != "cpu":
                    continue  # measured by the benchmark task on its own node pool; failures listed once, by cpu's
                row = {"name": meta.name, "format": meta.format, "precision": meta.precision, "target": meta.target,
                       "technique": meta.technique, "parent": meta.parent, "params": meta.params,
                       "extra": meta.extra, "hardware": hardware, "threads": counts[0]}
                if meta.failed:  # the stage broke on this model (kfopt.stage.optional_stage): nothing to measure
                    results.append({**row, "hardware": "n/a", "status": "failed", "reason": meta.reason})
                    log(f"  {meta.name:<24} FAILED: {meta.reason}")
                    continue
                if meta.skipped or missing:
                    results.append({**row, "status": "skipped", "reason": meta.reason or missing})
                    log(f"  {meta.name:<24} skipped: {meta.reason or missing}")
                    continue
                try:
                    variant.read(vdir)  # checksums, before anything is measured
                except Exception as exc:  # noqa: BLE001 - a broken artifact is a row, not a crash
                    results.append({**row, "status": "failed", "reason": str(exc)})
                    continue
                pred_path = tmp / "predictions" / f"{meta.name}.npy"
                dirs[meta.name] = vdir
                start = time.perf_counter()
                measured = _run_worker(vdir, dataset_dir, worker_settings, pred_path, 900)
                row.update(measured)
                row.update(sizes(vdir, meta))
                if measured["status"] == "ok":
                    row["verification"] = verify.compare(np.load(pred_path), baseline_probs(), y, meta.task,
                                                         accuracy_budget, min_agreement, confidence)
                    row["verification_by_batch"] = _by_batch(pred_path, row["latency"], baseline_probs(), y,
                                                             meta.task, accuracy_budget, min_agreement, confidence)
                    row["by_threads"] = {str(counts[0]): {"latency": dict(row["latency"]),
                                                          "verification_by_batch": dict(row["verification_by_batch"])}}
                    log(f"  {meta.name:<24} acc {row['accuracy']:.4f}  p50@1 "
                        f"{row['latency'].get('1', {}).get('p50_ms', float('nan')):.3f} ms  "
                        f"({time.perf_counter() - start:.1f}s)")
                else:
                    log(f"  {meta.name:<24} FAILED: {measured['reason']}")
                results.append(row)

        def verify_at(pred: Path, latency: dict[str, Any], task: str) -> dict[str, Any]:
            return _by_batch(pred, latency, baseline_probs(), y, task, accuracy_budget, min_agreement, confidence)

        plan.measure(results, dirs, lambda vdir, extra, pred: _run_worker(vdir, dataset_dir, {**worker_settings,
                                                                                                **extra}, pred, 900),
                     verify_at, tmp / "predictions", log)
        summary = {"hardware": hardware, "environment": env, "settings": settings, "serving": plan.serving,
                   "budget": {"accuracy_budget_pp": accuracy_budget, "min_agreement": min_agreement,
                              "confidence": confidence},
                   "baseline": {"name": base_meta.name, "accuracy": base.get("accuracy")}, "results": results}
        (tmp / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def _worker_main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    out = Path(argv[1])
    result = measure_variant(Path(args["variant_dir"]), Path(args["dataset_dir"]), args["batch_sizes"],
                             args["threads"], args["warmup"], args["min_runs"], args["max_seconds"],
                             args["target_ci"], Path(args["predictions_out"]), args.get("evaluate", True),
                             args.get("sweep"))
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
