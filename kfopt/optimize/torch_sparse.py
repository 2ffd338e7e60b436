"""Unstructured global-magnitude pruning of kfopt's own torch models, for size (not speed).

The sparsity s is searched over `prune.sparsities` (kfopt.optimize.prune_search: bisection, safest first,
within the time budget) for the most aggressive that passes the in-stage check; the objective is the
gzipped size, which is all that zeros buy. At each s, `torch.nn.utils.prune.global_unstructured` (L1)
ranks the weights of every convolution and linear layer together and masks the smallest fraction s of
them, so layers with many small weights lose more than the rest. The masked model is fine-tuned with the masks in place
(the loss and recipe of kfopt.optimize.torch_prune: the labels plus the unpruned model's softened
outputs, to early stopping on agreement with the unpruned model, the best epoch kept), then `prune.remove` makes the zeros
plain weights, so the saved `.pt2` is an ordinary fp32 program:

    sparse_<NN>              the kept sparsity's fp32 .pt2 (torch eager); sparsity per layer and overall, and size and
                             gzip size against the unpruned model, in kfopt.json
    sparse_<NN>_onnx_fp32    its ONNX export, then sparse_<NN>_onnx_int8: the prune stage's CHAIN

Zeros still multiply: no runtime here skips them, so the model is smaller after gzip and no faster.
kfopt.json records the latency against the unpruned model measured in the same runtime (torch eager,
one thread), with `speeds_up` (true only past TIMING_NOISE), so the report says so rather than
assuming. Structured pruning (kfopt.optimize.torch_prune) is the one that removes work.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from kfopt import bench, passes, variant
from kfopt.data import dataset as ds_mod
from kfopt.export import child_meta
from kfopt.optimize import prune_search, recipe, torch_distill, torch_prune

TEMPERATURE = torch_prune.TEMPERATURE
HARD_WEIGHT = torch_prune.HARD_WEIGHT
SEARCH_RULE = ("the most aggressive sparsity whose pruned model passes the in-stage check (bisection, safest "
               "first); the smallest gzipped .pt2 among the passing points")
TIMING_NOISE = torch_prune.TIMING_NOISE


def sparse_name(sparsity: float) -> str:
    return f"sparse_{int(round(sparsity * 100)):02d}"


def _weights(module) -> list[tuple[str, Any]]:
    """(name, layer) of every convolution and linear layer: the weights global pruning ranks together."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, kinds)]


def prune_globally(module, sparsity: float) -> list[tuple[str, Any]]:
    """Mask the `sparsity` smallest-magnitude weights over all conv/linear layers together (masks stay)."""
    from torch.nn.utils import prune

    layers = _weights(module)
    prune.global_unstructured([(layer, "weight") for _, layer in layers], pruning_method=prune.L1Unstructured,
                              amount=sparsity)
    return layers


def make_permanent(layers: list[tuple[str, Any]]) -> None:
    """`prune.remove`: the masked weights become plain zero-filled `weight` tensors, the hooks go."""
    from torch.nn.utils import prune

    for _, layer in layers:
        prune.remove(layer, "weight")


def measured_sparsity(layers: list[tuple[str, Any]]) -> dict[str, Any]:
    """Zeros per layer's weight and overall over the pruned weights (biases are not pruned)."""
    per, zeros, size = {}, 0, 0
    for name, layer in layers:
        w = layer.weight.detach()
        z = int((w == 0).sum())
        per[name] = round(z / w.numel(), 4)
        zeros, size = zeros + z, size + w.numel()
    return {"overall": round(zeros / size, 4), "layers": per}


def _with_sizes(vdir: Path, meta: variant.VariantMeta, unpruned: dict[str, int] | None = None) -> variant.VariantMeta:
    """Raw and gzip size (as the benchmark measures them); for the sparse .pt2, its gzip ratio to the
    unpruned .pt2 (same format, so the ratio is the pruning's alone)."""
    meta.extra.update(bench.sizes(vdir, meta))
    if unpruned:
        meta.extra["unpruned_size_gzip_bytes"] = unpruned["size_gzip_bytes"]
        meta.extra["gzip_ratio_vs_unpruned"] = round(meta.extra["size_gzip_bytes"] / unpruned["size_gzip_bytes"], 4)
    return variant.write(vdir, meta)


def _no_faster(latency: dict[str, Any]) -> dict[str, Any]:
    """`speeds_up` only past timing noise: zeros cannot make eager torch faster, a 1.03× is the shared CPU."""
    return {**latency, "speeds_up": latency[str(torch_prune.TIMED_BATCHES[-1])]["speedup"] > 1 + TIMING_NOISE}


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, sparsities: list[float], epochs: int,
        calibration_samples: int, accuracy_budget: float, min_agreement: float, confidence: float,
        configs: dict[str, Any],
        chain, time_budget_s: float = 60.0, log=print) -> dict[str, Any]:
    """The global-magnitude pruning of the torch baseline at `baseline_dir` searched over `sparsities`, the kept
    one followed by `chain`, under `out_dir`."""
    import tempfile

    from kfopt.frameworks import torch as adapter

    parent = variant.read(baseline_dir)
    unpruned_sizes = bench.sizes(Path(baseline_dir), parent)
    metrics: dict[str, Any] = {}
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
            layers = prune_globally(module, sparsity)
            history = torch_distill.distill_into(module, unpruned, ds, epochs=epochs, temperature=TEMPERATURE,
                                                 alpha=HARD_WEIGHT, seed=int(parent.params.get("seed", 1)),
                                                 keep="agreement", patience=torch_prune.PATIENCE, targets=targets)
            make_permanent(layers)
            measured = measured_sparsity(layers)
            latency = _no_faster(torch_prune._latency(unpruned, module, shape))
            meta = child_meta(parent, folder.name, technique="prune", params={
                "method": "unstructured global magnitude (torch.nn.utils.prune.global_unstructured, L1, "
                          "then prune.remove)", "target_sparsity": sparsity, "max_epochs": epochs,
                "learning_rate": torch_distill.LEARNING_RATE,
                "fine_tune": f"masks in place, labels + unpruned model's outputs (T={TEMPERATURE:g}), to early "
                             f"stopping on validation agreement (patience {torch_prune.PATIENCE}), best epoch kept"},
                extra={"sparsity": measured, "latency_vs_unpruned": latency,
                       "recipe": recipe.summary(history, "val_agreement", epochs),
                       "val_agreement_with_unpruned": history["val_agreement"]})
            adapter.save(module, folder)
            variant.write(folder, meta)
            meta = _with_sizes(folder, ctx.check.record(folder), unpruned_sizes)
            return {"sparsity": measured["overall"], "size_gzip_bytes": meta.extra["size_gzip_bytes"],
                    "epochs_run": len(history["val_agreement"])}

        search = ctx.search("sparsity", "size_gzip_bytes", SEARCH_RULE)
        meta = prune_search.run(sparsities, search, make, sparse_name, Path(work) / "points", tmp)
        name, latency = meta.name, meta.extra["latency_vs_unpruned"]
        for child in passes.follow(chain, tmp / name, tmp, ctx, configs):
            if child.status == "ok":
                child = _with_sizes(tmp / child.name, child)
                metrics[f"{child.name}_size_gzip_bytes"] = child.extra["size_gzip_bytes"]
        speed = latency[str(torch_prune.TIMED_BATCHES[-1])]["speedup"]
        log(f"  {name}: kept of {len(search.points)} tried, {meta.extra['sparsity']['overall']:.0%} zeros, gzip "
            f"{meta.extra['size_gzip_bytes']} bytes ({meta.extra['gzip_ratio_vs_unpruned']:.2f}× the unpruned), "
            f"{speed:.2f}× the unpruned speed at batch {torch_prune.TIMED_BATCHES[-1]} ({latency['runtime']})")
        metrics.update({f"{name}_sparsity": meta.extra["sparsity"]["overall"],
                        f"{name}_size_gzip_bytes": meta.extra["size_gzip_bytes"],
                        f"{name}_speedup_at_{torch_prune.TIMED_BATCHES[-1]}": speed,
                        "sparse_kept_sparsity": meta.params["target_sparsity"],
                        "sparse_points_tried": len(search.points),
                        f"{name}_seconds": round(time.perf_counter() - start, 2),
                        "variants": len(variant.discover(tmp))})
    return metrics
