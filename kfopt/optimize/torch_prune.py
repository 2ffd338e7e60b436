"""Structured channel pruning of kfopt's own torch models (torch-pruning 1.6.1), for real speed.

Magnitude pruning zeroes weights and leaves every multiply in place: smaller after gzip, no faster.
Removing whole channels makes the layers themselves smaller. torch-pruning builds the model's
dependency graph (a conv's output channels, the next conv's input channels, the batch norm and the
flattened linear between them, residual adds that tie channels together) and removes a group of
coupled channels at once, so the pruned network stays consistent. The sparsity s (here the fraction of
channels removed from each prunable layer; the classifier head keeps its units) is searched over
`prune.sparsities` (kfopt.optimize.prune_search: bisection, safest first, within the time budget) for the
most aggressive that passes the in-stage check; the objective is latency (torch eager p50 at batch 1,
one thread), since removed channels buy speed. Only the kept one gets a variant and the CHAIN:

    pruned_<NN>              fp32 .pt2 of the pruned, fine-tuned module (torch eager)
    pruned_<NN>_onnx_fp32    its ONNX export, then pruned_<NN>_onnx_int8 (ORT static int8): the prune
                             stage's CHAIN (whose TFLite int8 is skipped with the reason for torch)

The pruned model is fine-tuned to recover the unpruned one's answers: the loss mixes the labels'
cross-entropy with the unpruned model's softened outputs (kfopt.optimize.torch_distill.distill_into,
temperature `TEMPERATURE`, the unpruned model's outputs computed once for every point), to early stopping
on the validation answers' agreement with the unpruned model (PATIENCE, the rate halved on plateaus,
kfopt.optimize.recipe), whose best epoch is kept, since top-1 agreement is what the check against the
baseline asks for besides accuracy. `prune.epochs` is the most it runs; each point starts from the
unpruned model, seeded from the baseline's training seed. It is then
checked against the baseline on the validation split like every pass. kfopt.json records the parameters and MACs before and after and the
latency of pruned vs unpruned measured here in the same runtime (torch eager, one thread) at batch 1
and 64, with `speeds_up` false when the pruning did not make it faster.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from kfopt import passes, variant
from kfopt.data import dataset as ds_mod
from kfopt.export import child_meta
from kfopt.optimize import checks, prune_search, recipe, torch_distill

LEARNING_RATE = torch_distill.LEARNING_RATE
TEMPERATURE = 2.0
HARD_WEIGHT = 0.5  # of the labels' loss; the rest matches the unpruned model
TIMED_BATCHES = (1, 64)
TIMING_NOISE = 0.1  # p50 differences under 10% between two runs of the same work are noise on a shared CPU
PATIENCE = 2  # fine-tuning epochs without a better validation agreement before it stops (kfopt.optimize.recipe)
SEARCH_RULE = ("the most aggressive channel ratio whose pruned model passes the in-stage check (bisection, safest "
               "first): the lowest torch eager p50 at batch 1 among the passing points, those within "
               f"{TIMING_NOISE:.0%} of it counted as equally fast and the most aggressive of them kept")


def _prune(module, feature_shape, ratio: float):
    """Remove `ratio` of the channels of every prunable layer but the head, dependency-graph aware."""
    import torch
    import torch_pruning as tp

    example = torch.zeros(1, *feature_shape)
    before = tp.utils.count_ops_and_params(module, example)
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[module.out])
    pruner.step()
    after = tp.utils.count_ops_and_params(module, example)
    return {"macs_before": int(before[0]), "macs_after": int(after[0]),
            "parameters_before": int(before[1]), "parameters_after": int(after[1])}


def _latency(unpruned, pruned, feature_shape) -> dict[str, Any]:
    """p50 of both modules in torch eager, one thread, at each timed batch (the same inputs for both)."""
    import numpy as np
    import torch

    from kfopt import bench

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"runtime": f"torch {torch.__version__} eager, 1 thread"}
    try:
        for bs in TIMED_BATCHES:
            x = torch.from_numpy(np.random.default_rng(0).standard_normal((bs, *feature_shape)).astype(np.float32))
            p50 = {}
            for name, module in (("unpruned", unpruned), ("pruned", pruned)):
                with torch.inference_mode():
                    p50[name] = bench.time_calls(lambda: module(x), warmup=10, min_runs=30, max_seconds=0.5,
                                                 target_ci=0.02)["p50_ms"]
            out[str(bs)] = {"unpruned_p50_ms": round(p50["unpruned"], 4), "pruned_p50_ms": round(p50["pruned"], 4),
                            "speedup": round(p50["unpruned"] / p50["pruned"], 3)}
    finally:
        torch.set_num_threads(threads)
    out["speeds_up"] = out[str(TIMED_BATCHES[-1])]["speedup"] > 1.0
    return out


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, sparsities: list[float], epochs: int,
        calibration_samples: int, accuracy_budget: float, min_agreement: float, confidence: float,
        configs: dict[str, Any],
        chain, time_budget_s: float = 60.0, log=print) -> dict[str, Any]:
    """The structured pruning of the torch baseline at `baseline_dir` searched over `sparsities`, the kept one
    fine-tuned and followed by `chain`, under `out_dir`."""
    import tempfile

    from kfopt.frameworks import torch as adapter

    parent = variant.read(baseline_dir)
    with variant.staged_dir(Path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        ds = ds_mod.read(dataset_dir)
        ctx = passes.Context.for_stage(ds, baseline_dir, calibration_samples, accuracy_budget, min_agreement, work,
                                       time_budget_s, confidence=confidence)
        unpruned = adapter.load(baseline_dir)
        shape = list(unpruned.feature_shape)
        targets = torch_distill.teacher_outputs(unpruned, ds)  # once for every point

        def make(sparsity: float, folder: Path) -> dict[str, Any]:
            module = copy.deepcopy(unpruned)
            counts = _prune(module, shape, sparsity)
            history = torch_distill.distill_into(module, unpruned, ds, epochs=epochs, temperature=TEMPERATURE,
                                                 alpha=HARD_WEIGHT, seed=int(parent.params.get("seed", 1)),
                                                 keep="agreement", patience=PATIENCE, targets=targets)
            latency = _latency(unpruned, module, shape)
            meta = child_meta(parent, folder.name, technique="prune", params={
                "method": "structured channel pruning (torch-pruning, dependency graph, L2 group magnitude)",
                "channel_ratio": sparsity, "target_sparsity": sparsity, "max_epochs": epochs,
                "learning_rate": LEARNING_RATE,
                "fine_tune": f"labels + unpruned model's outputs (T={TEMPERATURE:g}), to early stopping on validation "
                             f"agreement (patience {PATIENCE}, rate halved on plateaus), best epoch kept"},
                extra={**counts, "latency_vs_unpruned": latency,
                       "recipe": recipe.summary(history, "val_agreement", epochs),
                       "val_agreement_with_unpruned": history["val_agreement"]})
            adapter.save(module, folder)
            variant.write(folder, meta)
            ctx.check.record(folder)
            return {"p50_ms": latency[str(TIMED_BATCHES[0])]["pruned_p50_ms"], "macs": counts["macs_after"],
                    "parameters": counts["parameters_after"], "epochs_run": len(history["val_agreement"])}

        search = ctx.search("sparsity", "p50_ms", SEARCH_RULE)
        meta = prune_search.run(sparsities, search, make, checks.pruned_name, Path(work) / "points", tmp,
                                noise=TIMING_NOISE)
        name, counts, latency = meta.name, meta.extra, meta.extra["latency_vs_unpruned"]
        passes.follow(chain, tmp / name, tmp, ctx, configs)
        speed = latency[str(TIMED_BATCHES[-1])]["speedup"]
        log(f"  {name}: kept of {len(search.points)} tried, {counts['parameters_before']} → "
            f"{counts['parameters_after']} parameters, {speed:.2f}× {'faster' if speed > 1 else 'NOT faster'} than "
            f"unpruned at batch {TIMED_BATCHES[-1]} ({latency['runtime']})")
        metrics = {f"{name}_speedup_at_{TIMED_BATCHES[-1]}": speed, "structured_kept_sparsity": meta.params["channel_ratio"],
                   "structured_points_tried": len(search.points), f"{name}_seconds": round(time.perf_counter() - start, 2),
                   "variants": len(variant.discover(tmp))}
    return metrics
