"""The prune stage: tfmot magnitude pruning searched over sparsity, then the passes its CHAIN declares.

`prune.sparsities` is the search space (kfopt.optimize.prune_search): bisection, safest first, finds the
most aggressive sparsity whose pruned model passes the in-stage check, within `search.time_budget_s`.
The objective is the gzipped size of the fp32 SavedModel: unstructured zeros buy size, not speed (every
multiply stays). Only the kept sparsity gets a variant and its CHAIN:

    pruned_<NN>              fp32 SavedModel, sparsity per layer and overall, and the search, in kfopt.json
    pruned_<NN>_tflite_int8  its full-integer int8 TFLite (the size win multiplies after gzip)
    pruned_<NN>_onnx_fp32    its ONNX export, and pruned_<NN>_onnx_int8 its ORT static int8

The recipe per point, from the baseline each time (so a point does not depend on the search's path):
prune_low_magnitude with a PolynomialDecay schedule from 0 to s over the first RAMP of `prune.epochs`
(at least one epoch). tfmot updates masks only on steps that are multiples of `frequency` up to
`end_step`, so end_step is a multiple of frequency within the ramp: the last mask update lands exactly
on s before the recovery phase begins. The recovery phase (the masks no longer move; Adam starts afresh)
runs to early stopping on the validation loss (PATIENCE epochs, best weights restored) with the learning
rate cut by LR_FACTOR when the loss stops improving, `prune.epochs` being the maximum of both phases
together. Both phases are one Keras fit: tracing the wrapped model's training graph costs more than the
epochs on a small split (a brought MobileNetV2: 41.7 s a point with two fits, 22.4 s with one). What
the model learns is HARD_WEIGHT of the labels and the rest the baseline's own probabilities (computed
once per stage), as the torch pruners mix them: fine-tuning on labels alone recovers accuracy by
answering differently from the baseline, and the in-stage check asks for its answers too (top-1
agreement). Measured on a 400-sample digits CNN at 50%: agreement 0.95 with half the labels, 0.983
with a tenth (the check asks 0.97). Seeded from the baseline's training seed; the epochs actually run,
the recovery's losses and learning rates are recorded (kfopt.json `extra["recipe"]`). strip_pruning removes
the wrappers before export. Only layers with a kernel tfmot knows how to prune (Conv*, Dense,
DepthwiseConv2D, SeparableConv*, Embedding, recurrent cells, or a user's PrunableLayer) are wrapped;
preprocessing, normalization and other layers are left as they are (tfmot's default wraps every layer
and refuses a model holding one it does not know, e.g. Rescaling).

Pruning needs the model's own code: the baseline's framework (kfopt.json) must have the "prune"
capability, and tfmot prunes Keras models (a model of another framework gets skipped variants with
the reason; kfopt's own torch models get structured channel pruning, kfopt.optimize.torch_prune, and
global-magnitude pruning to sparse_<NN>, kfopt.optimize.torch_sparse, each searched the same way on half
the stage's time budget and followed by CHAIN). The search's clock is the stage's (passes.Context.search):
the ORT int8 search in the CHAIN starts no new setting once the sparsity search has spent the budget.
The kept model's in-stage check against the baseline is recorded in its kfopt.json, so the int8 pass
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
from kfopt.optimize import checks, prune_search
from kfopt.passes import FINE_TUNE_BATCH, onnx_export, ort_int8, tflite_int8
from kfopt.passes.check import SWITCHED_OFF, write_skipped

#: the passes that follow each pruned fp32 model (kfopt.passes.follow)
CHAIN = (("tflite_int8",), ("onnx_export", "ort_int8"))
#: the frameworks this stage's pruner (tfmot) handles
PRUNES = ("keras",)

LEARNING_RATE = 1e-3  # Adam's default: the surviving weights must move to make up for the removed ones
MASK_UPDATES = 10  # pruning steps of the schedule, evenly spaced up to end_step
SEARCH_RULE = ("the most aggressive sparsity whose pruned model passes the in-stage check (bisection, safest "
               "first); the smallest gzipped fp32 SavedModel among the passing points")
RAMP = 0.25  # share of prune.epochs (at least one epoch) over which the masks reach the target sparsity
PATIENCE = 2  # recovery epochs without a better validation loss before it stops (best weights restored)
LR_FACTOR = 0.3  # the recovery's learning rate is multiplied by this after an epoch without improvement
HARD_WEIGHT = 0.1  # share of the labels in what the pruned model learns; the rest is the baseline's answers


def schedule_steps(train_samples: int, epochs: int, batch: int = FINE_TUNE_BATCH) -> dict[str, int]:
    """The ramp (whole epochs, RAMP of `epochs`, at least one, leaving at least one for recovery), its
    end_step (a multiple of frequency, within the ramp) and frequency, and the recovery's most epochs."""
    per_epoch = int(np.ceil(train_samples / batch))
    ramp_epochs = min(epochs - 1, max(1, round(RAMP * epochs)))  # epochs >= 2
    ramp = ramp_epochs * per_epoch  # steps 1..ramp run in the ramp: the update at end_step lands there
    updates = min(MASK_UPDATES, ramp)
    return {"steps_per_epoch": per_epoch, "ramp_epochs": ramp_epochs, "ramp_steps": ramp,
            "frequency": ramp // updates, "end_step": ramp // updates * updates,
            "max_recovery_epochs": epochs - ramp_epochs}


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


def soft_targets(labels: np.ndarray, baseline_probs: np.ndarray) -> np.ndarray:
    """What the pruned model learns: HARD_WEIGHT of the labels, the rest the baseline's own answers (its
    probabilities), so recovering accuracy does not walk away from the answers the in-stage check compares."""
    probs = np.asarray(baseline_probs, np.float32).reshape(len(labels), -1)  # binary: one column
    onehot = (labels.reshape(probs.shape).astype(np.float32) if probs.shape[-1] == 1
              else np.eye(probs.shape[-1], dtype=np.float32)[labels.astype(int)])
    return HARD_WEIGHT * onehot + (1 - HARD_WEIGHT) * probs


def _fit(model, x, y, validation, *, task: str, epochs: int, seed: int, callbacks: list):
    from kfopt.tfenv import keras

    k = keras()
    k.utils.set_random_seed(seed)
    model.compile(optimizer=k.optimizers.Adam(LEARNING_RATE),
                  loss="binary_crossentropy" if task == "binary" else "categorical_crossentropy")
    history = model.fit(x, y, epochs=epochs, batch_size=FINE_TUNE_BATCH, verbose=0, shuffle=True,
                        validation_data=validation, callbacks=callbacks)
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def prune_model(model, ds: ds_mod.Dataset, sparsity: float, epochs: int, seed: int = 1,
                baseline_probs: tuple[np.ndarray, np.ndarray] | None = None):
    """Prune to `sparsity` over the ramp, then recover to early stopping (module docstring), learning the
    soft_targets made of the baseline's (train, val) probabilities, or the labels alone without them.
    Returns (stripped model, schedule, pruned layers, recipe: epochs run, best recovery epoch, rates)."""
    import tensorflow_model_optimization as tfmot

    from kfopt.tfenv import keras

    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
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
    if baseline_probs is None:
        units = 1 if ds.schema.task == "binary" else ds.schema.num_classes
        targets = [np.eye(units, dtype=np.float32)[y] if units > 1 else y.reshape(-1, 1).astype(np.float32)
                   for y in (yt, yv)]
    else:
        targets = [soft_targets(y, probs) for y, probs in zip((yt, yv), baseline_probs)]
    ramp = steps["ramp_epochs"]
    k = keras()

    class AfterRamp(k.callbacks.ReduceLROnPlateau):
        """Reduce-on-plateau that leaves the ramp alone (its loss rises with the sparsity, by design), and a
        fresh Adam for the recovery: the moments gathered while the masks moved describe another network."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == ramp:
                for v in self.model.optimizer.variables:
                    v.assign(np.zeros(v.shape, v.dtype.as_numpy_dtype))

        def on_epoch_end(self, epoch, logs=None):
            if epoch >= ramp:
                super().on_epoch_end(epoch, logs)

    # one fit (one traced training graph, which costs more than the epochs on a small split); the early
    # stopping and the learning-rate schedule watch the recovery epochs only
    history = _fit(wrapped, xt, targets[0], task=ds.schema.task, seed=seed, validation=(xv, targets[1]),
                   epochs=epochs, callbacks=[
                       tfmot.sparsity.keras.UpdatePruningStep(),
                       k.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE, restore_best_weights=True,
                                                 start_from_epoch=ramp),
                       AfterRamp(monitor="val_loss", factor=LR_FACTOR, patience=1)])
    val_loss = history["val_loss"][ramp:]
    recipe = {"epochs_run": ramp + len(val_loss), "recovery_epochs_run": len(val_loss),
              "best_recovery_epoch": int(np.argmin(val_loss)) + 1,
              "recovery_val_loss": [round(v, 5) for v in val_loss],
              "learning_rates": [float(f"{v:.3g}") for v in history.get("lr", [])]}
    return tfmot.sparsity.keras.strip_pruning(wrapped), steps, pruned_layers, recipe


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
    """The variants this stage would have made, named after the safest sparsity (the one a search that
    could not go further keeps): each pruned model and what its CHAIN makes from it."""
    from kfopt.optimize.torch_sparse import sparse_name

    namers = (checks.pruned_name, sparse_name) if parent.framework == "torch" else (checks.pruned_name,)
    out = []
    for name in (namer(min(sparsities)) for namer in namers):
        out += [(name, parent.format, "cpu"), *passes.chained_names(CHAIN, child_meta(parent, name, technique="prune"))]
    return out


def why_not(parent: variant.VariantMeta) -> str | None:
    """Why this baseline cannot be pruned here, from its kfopt.json (framework and its capabilities)."""
    lacking = passes.lacks(parent, "prune")
    if lacking or parent.framework in PRUNES:
        return lacking
    return f"kfopt prunes with tfmot, which takes {'/'.join(PRUNES)} models; this one is {parent.framework}"


def _point(adapter, baseline_dir: Path, parent: variant.VariantMeta, ds: ds_mod.Dataset, ctx: passes.Context,
           epochs: int):
    """The search's `make_point`: one pruned, fine-tuned model at a sparsity, saved and checked. The
    baseline answers the training split once for every point (its validation answers are the check's)."""
    from kfopt import bench, formats

    baseline_probs = (bench.predict_all(formats.load(baseline_dir), ds.split("train")[0]), ctx.check.reference)

    def make(sparsity: float, folder: Path) -> dict[str, Any]:
        model, steps, pruned_layers, recipe = prune_model(adapter.load(baseline_dir), ds, sparsity, epochs,
                                                          seed=int(parent.params.get("seed", 1)),
                                                          baseline_probs=baseline_probs)
        measured = measured_sparsity(model, pruned_layers)
        meta = child_meta(parent, folder.name, technique="prune", params={
            "target_sparsity": sparsity, "max_epochs": epochs, "schedule": "PolynomialDecay", **steps,
            "learning_rate": LEARNING_RATE, "targets": f"labels x{HARD_WEIGHT:g} + the baseline's probabilities",
            "recovery": f"early stopping on validation loss (patience {PATIENCE}, best weights restored), learning "
                        f"rate x{LR_FACTOR:g} on a plateau"},
            extra={"sparsity": measured, "recipe": recipe})
        adapter.save(model, folder)
        variant.write(folder, meta)
        meta = _with_sizes(folder, ctx.check.record(folder))
        return {"sparsity": measured["overall"], "size_gzip_bytes": meta.extra["size_gzip_bytes"],
                "epochs_run": recipe["epochs_run"]}

    return make


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, enabled: bool = True,
        sparsities: list[float] = (0.3, 0.5, 0.7, 0.8, 0.9), epochs: int = 8, calibration_samples: int = 200,
        accuracy_budget: float = 0.5, min_agreement: float = 0.97, confidence: float = 0.95,
        fallback_max_attempts: int = 3,
        opset: int = 17, ort_search: tuple[str, ...] = ort_int8.SEARCH, bench_threads: tuple[int, ...] = (1,),
        bench_batch_sizes: tuple[int, ...] = (1, 64), search_time_budget_s: float = 60.0) -> dict[str, Any]:
    from kfopt import search as search_mod

    sparsities = [float(s) for s in sparsities]
    checks.prune(sparsities, epochs)
    checks.budget(accuracy_budget, min_agreement, fallback_max_attempts)
    search_mod.check_budget(search_time_budget_s)
    configs = {"tflite_int8": tflite_int8.Config(fallback_max_attempts, calibration_samples),
               "onnx_export": onnx_export.Config(opset),
               "ort_int8": ort_int8.Config(fallback_max_attempts, tuple(ort_search), bench_threads[0],
                                           tuple(bench_batch_sizes))}
    parent = variant.read(baseline_dir)
    if enabled and parent.framework == "torch" and not passes.lacks(parent, "prune"):
        from kfopt.optimize import torch_prune, torch_sparse  # kfopt's own torch model: structured and global

        metrics = {}
        with variant.staged_dir(Path(out_dir)) as tmp:
            for kind, module in (("structured", torch_prune), ("sparse", torch_sparse)):  # the budget split evenly
                metrics.update(module.run(baseline_dir, dataset_dir, tmp / f".{kind}", sparsities=sparsities,
                                          epochs=epochs, calibration_samples=calibration_samples, chain=CHAIN,
                                          accuracy_budget=accuracy_budget, min_agreement=min_agreement,
                                          confidence=confidence,
                                          configs=configs, time_budget_s=search_time_budget_s / 2))
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
        start = time.perf_counter()
        ds = ds_mod.read(dataset_dir)
        ctx = passes.Context.for_stage(ds, baseline_dir, calibration_samples, accuracy_budget, min_agreement, work,
                                       search_time_budget_s, confidence=confidence)
        search = ctx.search("sparsity", "size_gzip_bytes", SEARCH_RULE)  # the chain's ORT search shares the clock
        meta = prune_search.run(sparsities, search, _point(frameworks.of(parent), baseline_dir, parent, ds, ctx, epochs),
                                checks.pruned_name, Path(work) / "points", tmp)
        name = meta.name
        metrics.update({f"{name}_sparsity": meta.extra["sparsity"]["overall"],
                        f"{name}_size_gzip_bytes": meta.extra["size_gzip_bytes"], "prune_kept_sparsity":
                        meta.params["target_sparsity"], "prune_points_tried": len(search.points),
                        "prune_search_seconds": round(search.seconds, 2)})
        for child in passes.follow(CHAIN, tmp / name, tmp, ctx, configs):
            if child.status == "ok":
                child = _with_sizes(tmp / child.name, child)
                metrics[f"{child.name}_size_gzip_bytes"] = child.extra["size_gzip_bytes"]
        metrics[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
        metrics["variants"] = len(variant.discover(tmp))
    return metrics
