"""Leaderboard, Pareto front and the choice per deployment target under the accuracy budget.

A variant is eligible for a target when its format can serve that target, it was measured on the
target's hardware (edge is measured on the benchmark node's CPU, as a proxy), and it passed
verification; skipped and failed rows never are. Among eligible variants the objective picks the
winner; the runner-up and why it lost are kept, and so is the reason when a target has no eligible
variant. The choice names the thread count and the batch size it assumes: among the thread counts the
target's serving node allows (kfopt.finalists) the one that scored best, and for throughput:<B> the batch
where the finalist's batch sweep saturated.
"""

from __future__ import annotations

from typing import Any

from kfopt.errors import ConfigError

TARGET_HARDWARE = {"cpu": "cpu", "edge": "cpu", "gpu": "gpu", "tpu": "tpu"}
DEFAULT_OBJECTIVES = {"cpu": "latency:1", "edge": "size", "gpu": "throughput:64", "tpu": "throughput:64"}


def parse_objective(text: str) -> tuple[str, int | None]:
    kind, _, bs = text.partition(":")
    if kind == "size" and not bs:
        return kind, None
    if kind in ("latency", "throughput") and bs.isdigit():
        return kind, int(bs)
    raise ConfigError(f"Unknown objective {text!r}: use latency:<batch>, throughput:<largest batch> or size.")


def measurements(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per thread count (a string, as in JSON): the `latency`, `verification_by_batch` and `sweep` measured at it
    (kfopt.bench `by_threads`); a row from before thread counts were recorded: its own, at `threads`."""
    by = row.get("by_threads")
    if by:
        return {t: m for t, m in by.items() if m.get("status", "ok") == "ok"}
    return {str(row.get("threads")): {"latency": row.get("latency") or {},
                                      "verification_by_batch": row.get("verification_by_batch") or {}}}


def _threads(key: str) -> int | None:
    return int(key) if key.isdigit() else None


def threads_label(threads: int | None) -> str:
    if threads is None:
        return "threads not recorded"
    return "the runtime's default threads" if threads == 0 else f"{threads} thread{'s' if threads != 1 else ''}"


def _wrong(row: dict[str, Any], key: str, bs: int) -> bool:
    """Whether the row answered wrongly at batch `bs`: at thread count `key` (benchmark) or in its pass's own check."""
    own = ((row.get("extra") or {}).get("batch_verification") or {}).get("batches", {})
    ver = measurements(row).get(key, {}).get("verification_by_batch", {})
    return any(not r.get("passed", True) for r in (own.get(str(bs), {}), ver.get(str(bs), {})))


def options(row: dict[str, Any], objective: str, counts: list[str] | None = None) -> list[tuple[tuple, str, int]]:
    """((score...), thread count, batch) of every verified way `row` meets `objective`, lower scores better;
    `counts`: the thread counts the target may assume (None: any measured).

    latency:<B>: p50 at batch B. throughput:<B>: the most samples/s at a batch up to B — where the finalist's
    batch sweep saturated (kfopt.saturation) among the batches it verified, else at B. size: gzipped size,
    then the fastest thread count at the smallest batch timed (what the choice names).
    """
    from kfopt import saturation

    kind, bs = parse_objective(objective)
    out = []
    for key, m in measurements(row).items():
        if counts is not None and key not in counts:
            continue
        lat = m.get("latency") or {}
        if kind == "latency" and str(bs) in lat and not _wrong(row, key, bs):
            out.append(((lat[str(bs)]["p50_ms"],), key, bs))
        elif kind == "throughput" and m.get("sweep"):
            sweep = m["sweep"]
            points = [p for p in sweep["points"] if p["batch"] <= bs and not _wrong(row, key, p["batch"])]
            best, _ = saturation.best_and_stop([p["throughput"] for p in points], sweep["gain"], sweep["steps"])
            if best is not None:
                out.append(((-points[best]["throughput"],), key, points[best]["batch"]))
        elif kind == "throughput" and str(bs) in lat and not _wrong(row, key, bs):
            out.append(((-lat[str(bs)]["throughput"],), key, bs))
        elif kind == "size" and lat:
            first = min(int(b) for b in lat)
            out.append(((float(row["size_gzip_bytes"]), lat[str(first)]["p50_ms"]), key, first))
    if kind == "size" and not out and "size_gzip_bytes" in row:  # nothing timed: size alone decides
        out.append(((float(row["size_gzip_bytes"]),), str(row.get("threads")), None))
    return sorted(out)


def describe(row: dict[str, Any], objective: str, threads: str | None = None, batch: int | None = None) -> str:
    """The figure the objective ranked by, with the thread count and batch it was measured at."""
    kind, bs = parse_objective(objective)
    threads = str(row.get("threads")) if threads is None else threads
    batch = bs if batch is None else batch
    stats = measurements(row).get(threads, {}).get("latency", {}).get(str(batch))
    where = f"batch {batch}, {threads_label(_threads(threads))}"
    if kind == "size":
        return f"{row['size_gzip_bytes'] / 1024:.1f} KiB gzipped" + (
            f" (p50 {stats['p50_ms']:.3f} ms at {where})" if stats else "")
    if kind == "latency":
        return f"p50 {stats['p50_ms']:.3f} ms at {where}"
    sweep = measurements(row).get(threads, {}).get("sweep")
    swept = (f" (batch sweep {sweep['points'][0]['batch']}–{sweep['points'][-1]['batch']}: {sweep['stopped']})"
             if sweep and sweep.get("points") else "")
    return f"{stats['throughput']:.0f} samples/s at {where}{swept}"


def passed(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and row.get("verification", {}).get("passed", False)


def batch_failure(row: dict[str, Any], objective: str) -> str | None:
    """Why the variant answered wrongly at the objective's batch size (any batch, for size); else None.

    Two sources: the benchmark's verification at every batch size and thread count it timed
    (`verification_by_batch`, per thread count in `by_threads`, kfopt.bench) and a pass's own per-batch
    verification (kfopt.json extra["batch_verification"], e.g. the OpenVINO pass). A variant right at batch 64
    and wrong at batch 1 is never chosen for latency:1. The batches of a throughput sweep other than the
    objective's are checked where the sweep is scored (`options`).
    """
    _, bs = parse_objective(objective)
    own = ((row.get("extra") or {}).get("batch_verification") or {}).get("batches", {})
    failed = [(b, r, "") for b, r in own.items() if not r.get("passed") and (bs is None or b == str(bs))]
    several = len(measurements(row)) > 1
    for key, m in measurements(row).items():
        at = f", {threads_label(_threads(key))}" if several else ""
        failed += [(b, r, f" (benchmark, test split{at})") for b, r in (m.get("verification_by_batch") or {}).items()
                   if not r.get("passed") and (bs is None or b == str(bs))]
    return "; ".join(f"wrong at batch {b}{where}: {r.get('reason')}" for b, r, where in failed) or None


def ranked(rows: list[dict[str, Any]], target: str, objective: str,
           counts: list[str] | None = None) -> list[tuple[tuple, dict[str, Any], str, int]]:
    """(score, row, thread count, batch) of every verified variant serving `target`, best first."""
    from kfopt.formats import FORMATS

    serving = [r for r in rows if r["format"] in FORMATS and target in FORMATS[r["format"]].targets
               and r.get("hardware") == TARGET_HARDWARE[target]]
    out = []
    for r in serving:
        if passed(r) and not batch_failure(r, objective) and (opts := options(r, objective, counts)):
            score, key, batch = opts[0]
            out.append((score, r, key, batch))
    return sorted(out, key=lambda entry: entry[0])


def choose(rows: list[dict[str, Any]], targets: list[str], objectives: dict[str, str] | None = None,
           serving: dict[str, Any] | None = None) -> dict[str, Any]:
    """The choice per target, naming the thread count and batch it assumes. `serving` (kfopt.bench results'
    `serving`): the thread counts each target may assume — those of its serving node; None: any measured."""
    from kfopt.formats import FORMATS

    objectives = {**DEFAULT_OBJECTIVES, **(objectives or {})}
    choices: dict[str, Any] = {}
    for target in targets:
        if target not in TARGET_HARDWARE:
            raise ConfigError(f"Unknown deployment target {target!r}; known: {', '.join(TARGET_HARDWARE)}.")
        objective = objectives[target]
        parse_objective(objective)
        node = (serving or {}).get(target)
        counts = [str(t) for t in node["threads"]] if node else None
        scored = ranked(rows, target, objective, counts)
        if not scored:
            # a stage that failed is one row of format "n/a" (kfopt.stage.optional_stage): it serves nothing
            candidates = [r for r in rows if r["format"] in FORMATS and target in FORMATS[r["format"]].targets
                          and r.get("hardware") == TARGET_HARDWARE[target]]
            why = "; ".join(f"{r['name']}: " + (r.get("reason") or batch_failure(r, objective)
                                                 or r.get("verification", {}).get("reason", "not measured"))
                            for r in candidates) or f"no variant serving {target} was measured on {TARGET_HARDWARE[target]} hardware"
            choices[target] = {"chosen": None, "objective": objective, "reason": f"no variant passed: {why}"}
            continue
        _, best, key, batch = scored[0]
        entry = {"chosen": best["name"], "hardware": best["hardware"], "objective": objective,
                 "threads": _threads(key), "batch": batch,
                 "reason": f"best verified variant by {objective}: {describe(best, objective, key, batch)}, "
                           f"accuracy {best['accuracy']:.4f} ({best['verification']['accuracy_delta_pp']:+.2f} pp)"}
        if node:
            entry["cores"] = node.get("cores")
        if len(scored) > 1:
            _, second, key2, batch2 = scored[1]
            entry["runner_up"] = second["name"]
            entry["runner_up_reason"] = f"lost on {objective}: {describe(second, objective, key2, batch2)}"
        choices[target] = entry
    return choices


def pareto_front(rows: list[dict[str, Any]], batch: int = 1) -> list[str]:
    """Names of measured rows not dominated on (p50 latency, accuracy drop, gzipped size)."""
    points = [(r["name"], r["latency"][str(batch)]["p50_ms"], -r["verification"]["accuracy_delta_pp"],
               r["size_gzip_bytes"]) for r in rows
              if r.get("status") == "ok" and str(batch) in r.get("latency", {}) and "verification" in r]
    front = []
    for name, *p in points:
        dominated = any(all(q[i] <= p[i] for i in range(3)) and any(q[i] < p[i] for i in range(3))
                        for other, *q in points if other != name)
        if not dominated:
            front.append(name)
    return front
