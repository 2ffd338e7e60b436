"""Which variants the benchmark times again, at which thread counts and batch sizes, and merging what it finds.

Timing every variant at every thread count would multiply the benchmark's time; the choice needs it only
for the few that can win. So every variant is timed at the first of `bench.threads`, and then, per target
measured on this hardware, the `finalists` fastest verified variants at that count (kfopt.select.ranked)
are timed again:

- at each thread count the target's serving node allows: its cores (the deployment file's `targets`,
  kfopt.deployment; this node's own without one) and the other entries of `bench.threads` up to them
  (CPU targets only: an accelerator target runs at the first count);
- at the objective's batch (latency:<B>), the smallest batch (size), or, for throughput:<B>, over a batch
  sweep 1, 2, 4, ... up to B that stops where throughput saturates (kfopt.saturation).

Each (variant, thread count) is one worker process (kfopt.bench), and every batch it times is verified against
the baseline on calls of that batch, like the first ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from kfopt import select


@dataclasses.dataclass
class Plan:
    """The thread counts per target (`serving`, recorded in results.json for the choice) and the timing settings."""

    serving: dict[str, dict[str, Any]]
    objectives: dict[str, str]
    first: int
    finalists: int
    gain: float
    steps: int

    @classmethod
    def make(cls, targets: list[str], objectives: dict[str, str] | None, counts: list[int], deployment: str,
             hardware: str, finalists: int, gain: float, steps: int) -> "Plan":
        from kfopt import deployment as deploy_mod
        from kfopt.errors import ConfigError

        placed, source = None, "this node's CPUs (no deployment file)"
        if deployment and targets:
            try:
                placed, source = deploy_mod.load(deployment), f"deployment {deployment}"
            except ConfigError as err:  # a file given by path at compile time need not exist in this pod
                source = f"this node's CPUs (deployment {deployment} not readable here: {err})"
        serving = {}
        for target in targets:
            if select.TARGET_HARDWARE.get(target) != hardware:
                continue
            if target not in deploy_mod.CORE_TARGETS:
                serving[target] = {"cores": None, "threads": [counts[0]], "source": "an accelerator target: "
                                   "the first thread count"}
                continue
            cores = placed.cores_for(target) if placed else deploy_mod.node_cores()
            allowed = sorted({counts[0], cores, *(t for t in counts if t <= cores)})
            serving[target] = {"cores": cores, "threads": allowed,
                               "source": source if not placed or target in placed.cores else
                               f"deployment {deployment} gives no cores for {target}: this node's CPUs"}
        return cls(serving, {**select.DEFAULT_OBJECTIVES, **(objectives or {})}, counts[0], finalists, gain, steps)

    def work(self, rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
        """(variant, thread count) → {"batches": fixed batches to time, "sweep": the largest batch to sweep to}."""
        todo: dict[tuple[str, int], dict[str, Any]] = {}
        for target, node in self.serving.items():
            kind, bs = select.parse_objective(self.objectives[target])
            for _, row, _, batch in select.ranked(rows, target, self.objectives[target], [str(self.first)])[
                    :self.finalists]:
                for threads in node["threads"]:
                    need = todo.setdefault((row["name"], threads), {"batches": set(), "sweep": 0})
                    if kind == "throughput":
                        need["sweep"] = max(need["sweep"], bs)
                    elif threads != self.first and batch is not None:
                        need["batches"].add(batch)
        return {k: v for k, v in sorted(todo.items()) if v["sweep"] or v["batches"]}

    def measure(self, rows: list[dict[str, Any]], dirs: dict[str, Path],
                run_worker: Callable[[Path, dict[str, Any], Path], dict[str, Any]],
                verify_at: Callable[[Path, dict[str, Any], str], dict[str, Any]], pred_dir: Path,
                log: Callable[[str], None]) -> None:
        """Time the finalists; each result goes into its row's `by_threads[<count>]`."""
        by_name = {r["name"]: r for r in rows}
        for (name, threads), need in self.work(rows).items():
            row = by_name[name]
            entry = row["by_threads"].setdefault(str(threads), {"latency": {}, "verification_by_batch": {}})
            sweep = ({"max_batch": need["sweep"], "gain": self.gain, "steps": self.steps, "known": entry["latency"]}
                     if need["sweep"] else None)
            pred = pred_dir / f"{name}.threads{threads}.npy"
            measured = run_worker(dirs[name], {"threads": threads, "batch_sizes": sorted(need["batches"]),
                                               "evaluate": False, "sweep": sweep}, pred)
            if measured["status"] != "ok":
                entry.update(status="failed", reason=measured["reason"])
                log(f"  {name:<24} at {select.threads_label(threads)} FAILED: {measured['reason']}")
                continue
            entry["latency"].update(measured["latency"])
            entry["verification_by_batch"].update(verify_at(pred, measured["latency"], _task(dirs[name])))
            if measured.get("sweep"):
                entry["sweep"] = measured["sweep"]
            timed = ", ".join(f"p50@{b} {s['p50_ms']:.3f} ms" for b, s in sorted(measured["latency"].items(),
                                                                               key=lambda kv: int(kv[0])))
            best = f"; best batch {entry['sweep']['best_batch']}" if measured.get("sweep") else ""
            log(f"  {name:<24} at {select.threads_label(threads)}: {timed or 'no new batch'}{best}")


def _task(variant_dir: Path) -> str:
    from kfopt import variant

    return variant.read(variant_dir, verify=False).task
