"""Leaderboard, Pareto front and the choice per deployment target under the accuracy budget.

A variant is eligible for a target when its format can serve that target, it was measured on the
target's hardware (edge is measured on the benchmark node's CPU, as a proxy), and it passed
verification; skipped and failed rows never are. Among eligible variants the objective picks the
winner; the runner-up and why it lost are kept, and so is the reason when a target has no eligible
variant.
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
    raise ConfigError(f"Unknown objective {text!r}: use latency:<batch>, throughput:<batch> or size.")


def _score(row: dict[str, Any], objective: str) -> float | None:
    """Lower is better; None when the row lacks the figure the objective needs."""
    kind, bs = parse_objective(objective)
    if kind == "size":
        return float(row["size_gzip_bytes"])
    stats = row.get("latency", {}).get(str(bs))
    if not stats:
        return None
    return stats["p50_ms"] if kind == "latency" else -stats["throughput"]


def describe(row: dict[str, Any], objective: str) -> str:
    kind, bs = parse_objective(objective)
    if kind == "size":
        return f"{row['size_gzip_bytes'] / 1024:.1f} KiB gzipped"
    stats = row["latency"][str(bs)]
    return (f"p50 {stats['p50_ms']:.3f} ms at batch {bs}" if kind == "latency"
            else f"{stats['throughput']:.0f} samples/s at batch {bs}")


def passed(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and row.get("verification", {}).get("passed", False)


def batch_failure(row: dict[str, Any], objective: str) -> str | None:
    """Why the variant answered wrongly at the objective's batch size (any batch, for size); else None.

    Two sources: the benchmark's verification at every batch size it timed (`verification_by_batch`,
    kfopt.bench) and a pass's own per-batch verification (kfopt.json extra["batch_verification"], e.g.
    the OpenVINO pass). A variant right at batch 64 and wrong at batch 1 is never chosen for latency:1.
    """
    _, bs = parse_objective(objective)
    own = ((row.get("extra") or {}).get("batch_verification") or {}).get("batches", {})
    failed = [(b, r, "") for b, r in own.items() if not r.get("passed") and (bs is None or b == str(bs))]
    failed += [(b, r, " (benchmark, test split)") for b, r in (row.get("verification_by_batch") or {}).items()
               if not r.get("passed") and (bs is None or b == str(bs))]
    return "; ".join(f"wrong at batch {b}{where}: {r.get('reason')}" for b, r, where in failed) or None


def choose(rows: list[dict[str, Any]], targets: list[str], objectives: dict[str, str] | None = None) -> dict[str, Any]:
    from kfopt.formats import FORMATS

    objectives = {**DEFAULT_OBJECTIVES, **(objectives or {})}
    choices: dict[str, Any] = {}
    for target in targets:
        if target not in TARGET_HARDWARE:
            raise ConfigError(f"Unknown deployment target {target!r}; known: {', '.join(TARGET_HARDWARE)}.")
        objective = objectives[target]
        parse_objective(objective)
        # a stage that failed is one row of format "n/a" (kfopt.stage.optional_stage): it serves nothing
        serving = [r for r in rows if r["format"] in FORMATS and target in FORMATS[r["format"]].targets
                   and r.get("hardware") == TARGET_HARDWARE[target]]
        scored = sorted(((s, r) for r in serving if passed(r) and not batch_failure(r, objective)
                         and (s := _score(r, objective)) is not None),
                        key=lambda pair: pair[0])
        if not scored:
            why = "; ".join(f"{r['name']}: " + (r.get("reason") or batch_failure(r, objective)
                                                 or r.get("verification", {}).get("reason", "not measured"))
                            for r in serving) or f"no variant serving {target} was measured on {TARGET_HARDWARE[target]} hardware"
            choices[target] = {"chosen": None, "objective": objective, "reason": f"no variant passed: {why}"}
            continue
        best = scored[0][1]
        entry = {"chosen": best["name"], "hardware": best["hardware"], "objective": objective,
                 "reason": f"best verified variant by {objective}: {describe(best, objective)}, "
                           f"accuracy {best['accuracy']:.4f} ({best['verification']['accuracy_delta_pp']:+.2f} pp)"}
        if len(scored) > 1:
            second = scored[1][1]
            entry["runner_up"] = second["name"]
            entry["runner_up_reason"] = f"lost on {objective}: {describe(second, objective)}"
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
