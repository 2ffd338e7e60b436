"""The prune stage: tfmot magnitude pruning to each target sparsity, then the passes its CHAIN declares.

For each sparsity s: prune_low_magnitude with a PolynomialDecay schedule from 0 to s, fine-tuned on
the training split. tfmot updates masks only on steps that are multiples of `frequency` up to
`end_step`, so end_step is a multiple of frequency and training runs a quarter past it: the final
mask update lands exactly on s and the remaining steps let the surviving weights recover.
strip_pruning removes the wrappers before export. Only layers with a kernel tfmot knows how to prune
(Conv*, Dense, DepthwiseConv2D, SeparableConv*, Embedding, recurrent cells, or a user's PrunableLayer)
are wrapped; preprocessing, normalization and other layers are left as they are (tfmot's default
wraps every layer and refuses a model holding one it does not know, e.g. Rescaling). Variants per
sparsity:

    pruned_<NN>              fp32 SavedModel, sparsity per layer and overall in kfopt.json
    pruned_<NN>_tflite_int8  its full-integer int8 TFLite (the size win multiplies after gzip)
    pruned_<NN>_onnx_fp32    its ONNX export, and pruned_<NN>_onnx_int8 its ORT static int8

Pruning needs the model's own code: the baseline's framework (kfopt.json) must have the "prune"
capability, and tfmot prunes Keras models (a model of another framework gets skipped variants with
the reason; kfopt's own torch models get structured channel pruning, kfopt.optimize.torch_prune, and
global-magnitude pruning to sparse_<NN>, kfopt.optimize.torch_sparse, each followed by CHAIN). Each
pruned model's in-stage check against the baseline is recorded in its kfopt.json, so the int8 pass
that follows it has only the rest of the accuracy budget.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import frameworks, passes, variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.export import child_meta
from kfopt.optimize import checks
from kfopt.passes import FINE_TUNE_BATCH, onnx_export, ort_int8, tflite_int8
from kfopt.passes.check import SWITCHED_OFF, write_skipped

#: the passes that follow each pruned fp32 model (kfopt.passes.follow)
CHAIN = (("tflite_int8",), ("onnx_export", "ort_int8"))
#: the frameworks this stage's pruner (tfmot) handles
PRUNES = ("keras",)

LEARNING_RATE = 1e-3  # Adam's default: the surviving weights must move to make up for the removed ones
MASK_UPDATES = 10  # pruning steps of the schedule, evenly spaced up to end_step
RECOVERY = 0.25  # share of the fine-tuning steps after the last mask update


def schedule_steps(train_samples: int, epochs: int, batch: int = FINE_TUNE_BATCH) -> dict[str, int]:
    """end_step (a multiple of frequency, about 75% of the steps) and frequency for the schedule."""
    total = epochs * int(np.ceil(train_samples / batch))  # epochs >= 2, so total >= 2
    ramp = max(1, int((1 - RECOVERY) * total))  # < total: at least one step of recovery after the last update
    updates = min(MASK_UPDATES, ramp)
    return {"total_steps": total, "frequency": ramp // updates, "end_step": ramp // updates * updates}


def _kernels_only():
    """A tfmot PruningPolicy that wraps exactly the layers holding weights tfmot can prune."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    class KernelsOnly(tfmot.sparsity.keras.PruningPolicy):
        def allow_pruning(self, layer) -> bool:
            if isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
                return True
            if not PruneRegistry.supports(layer):
                return False
            return (PruneRegistry._is_rnn_layer(layer) or PruneRegistry._is_mha_layer(layer)
                    or bool(PruneRegistry._weight_names(layer)))

        def ensure_model_supports_pruning(self, model) -> None:
            """Any Sequential/functional model: the layers this policy does not allow stay unwrapped."""

    return KernelsOnly()


def _layers(model):
    """Every layer, nested models' layers included (tfmot wraps inside nested models too)."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def prune_model(model, ds: ds_mod.Dataset, sparsity: float, epochs: int, seed: int = 1):
    """Fine-tune with magnitude pruning to `sparsity`; returns (stripped model, schedule, pruned layers)."""
    import tensorflow_model_optimization as tfmot

    from kfopt.frameworks import keras as adapter

    xt, _ = ds.split("train")
    steps = schedule_steps(len(xt), epochs)
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
                                                    end_step=steps["end_step"], frequency=steps["frequency"])
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule,
                                                       pruning_policy=_kernels_only())
    pruned_layers = {}  # {layer: indices of its pruned weights}
    for layer in _layers(wrapped):
        pruned = {id(weight) for weight, _, _ in getattr(layer, "pruning_vars", [])}
        if pruned:
            pruned_layers[layer.layer.name] = [i for i, w in enumerate(layer.layer.weights) if id(w) in pruned]
    if not pruned_layers:
        raise ModelError("The model has no layer whose weights tfmot can prune (Conv, Dense, DepthwiseConv2D, "
                         "Embedding, recurrent); switch pruning off (prune_enabled=false).")
    adapter.fine_tune(wrapped, ds, epochs=epochs, learning_rate=LEARNING_RATE, batch_size=FINE_TUNE_BATCH, seed=seed,
                      callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(wrapped), steps, pruned_layers


def measured_sparsity(model, pruned_layers: dict[str, list[int]]) -> dict[str, Any]:
    """Zeros per pruned layer (its pruned kernels), overall over pruned kernels, and over all weights."""
    by_name = {layer.name: layer for layer in _layers(model)}
    layers, zeros, size = {}, 0, 0
    for name, indices in pruned_layers.items():
        weights = by_name[name].get_weights()
        z, n = sum(int((weights[i] == 0).sum()) for i in indices), sum(weights[i].size for i in indices)
        layers[name] = round(z / n, 4)
        zeros, size = zeros + z, size + n
    every = np.concatenate([w.ravel() for w in model.get_weights()]) if model.get_weights() else np.zeros(0)
    return {"overall": round(zeros / size, 4) if size else 0.0, "layers": layers,
            "all_weights": round(float((every == 0).mean()), 4) if every.size else 0.0}


def _with_sizes(vdir: Path, meta: variant.VariantMeta) -> variant.VariantMeta:
    """Record raw and gzip size (as the benchmark measures them) in kfopt.json extra."""
    from kfopt import bench

    meta.extra.update(bench.sizes(vdir, meta))
    return variant.write(vdir, meta)


def _names(parent: variant.VariantMeta, sparsities: list[float]) -> list[tuple[str, str, str]]:
    """Every variant this stage makes: each pruned model and what its CHAIN makes from it."""
    out = []
    for name in map(checks.pruned_name, sparsities):
        out += [(name, parent.format, "cpu"), *passes.chained_names(CHAIN, child_meta(parent, name, technique="prune"))]
    if parent.framework == "torch":  # kfopt's own torch models also get global-magnitude pruning (torch_sparse)
        from kfopt.optimize.torch_sparse import sparse_name

        for name in map(sparse_name, sparsities):
            out += [(name, parent.format, "cpu"),
                    *passes.chained_names(CHAIN, child_meta(parent, name, technique="prune"))]
    return out


def why_not(parent: variant.VariantMeta) -> str | None:
    """Why this baseline cannot be pruned here, from its kfopt.json (framework and its capabilities)."""
    lacking = passes.lacks(parent, "prune")
    if lacking or parent.framework in PRUNES:
        return lacking
    return f"kfopt prunes with tfmot, which takes {'/'.join(PRUNES)} models; this one is {parent.framework}"


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, enabled: bool = True,
        sparsities: list[float] = (0.5, 0.8), epochs: int = 8, calibration_samples: int = 200,
        accuracy_budget: float = 0.5, min_agreement: float = 0.97, confidence: float = 0.95,
        fallback_max_attempts: int = 3,
        opset: int = 17, ort_search: tuple[str, ...] = ort_int8.SEARCH, bench_threads: int = 1,
        bench_batch_sizes: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
    sparsities = [float(s) for s in sparsities]
    checks.prune(sparsities, epochs)
    checks.budget(accuracy_budget, min_agreement, fallback_max_attempts)
    configs = {"tflite_int8": tflite_int8.Config(fallback_max_attempts, calibration_samples),
               "onnx_export": onnx_export.Config(opset),
               "ort_int8": ort_int8.Config(fallback_max_attempts, tuple(ort_search), bench_threads,
                                           tuple(bench_batch_sizes))}
    parent = variant.read(baseline_dir)
    if enabled and parent.framework == "torch" and not passes.lacks(parent, "prune"):
        from kfopt.optimize import torch_prune, torch_sparse  # kfopt's own torch model: structured and global

        metrics = {}
        with variant.staged_dir(Path(out_dir)) as tmp:
            for kind, module in (("structured", torch_prune), ("sparse", torch_sparse)):
                metrics.update(module.run(baseline_dir, dataset_dir, tmp / f".{kind}", sparsities=sparsities,
                                          epochs=epochs, calibration_samples=calibration_samples, chain=CHAIN,
                                          accuracy_budget=accuracy_budget, min_agreement=min_agreement,
                                          confidence=confidence,
                                          configs=configs))
                for made in (tmp / f".{kind}").iterdir():
                    made.rename(tmp / made.name)
                (tmp / f".{kind}").rmdir()
            metrics["variants"] = len(variant.discover(tmp))
        return metrics
    metrics: dict[str, Any] = {}
    with variant.staged_dir(Path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        reason = SWITCHED_OFF if not enabled else why_not(parent)
        if reason:
            write_skipped(tmp, _names(parent, sparsities), reason, "prune", parent.name)
            return {"variants": 0}
        ds = ds_mod.read(dataset_dir)
        ctx = passes.Context.for_stage(ds, baseline_dir, calibration_samples, accuracy_budget, min_agreement, work,
                                       confidence=confidence)
        adapter = frameworks.of(parent)
        for sparsity in sparsities:
            name = checks.pruned_name(sparsity)
            start = time.perf_counter()
            model, steps, pruned_layers = prune_model(adapter.load(baseline_dir), ds, sparsity, epochs)
            measured = measured_sparsity(model, pruned_layers)
            meta = child_meta(parent, name, technique="prune", params={
                "target_sparsity": sparsity, "epochs": epochs, "schedule": "PolynomialDecay", **steps,
                "learning_rate": LEARNING_RATE}, extra={"sparsity": measured})
            adapter.save(model, tmp / name)
            variant.write(tmp / name, meta)
            meta = _with_sizes(tmp / name, ctx.check.record(tmp / name))
            metrics[f"{name}_sparsity"] = measured["overall"]
            metrics[f"{name}_size_gzip_bytes"] = meta.extra["size_gzip_bytes"]
            for child in passes.follow(CHAIN, tmp / name, tmp, ctx, configs):
                if child.status == "ok":
                    child = _with_sizes(tmp / child.name, child)
                    metrics[f"{child.name}_size_gzip_bytes"] = child.extra["size_gzip_bytes"]
            metrics[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
        metrics["variants"] = len(variant.discover(tmp))
    return metrics
