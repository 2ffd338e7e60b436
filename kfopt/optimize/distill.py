"""The distill stage: a smaller student learns from the trained baseline (the teacher), then int8.

The student is the teacher's own architecture with its filters/units scaled by `student_width`,
rebuilt from the Keras config, so it works for models kfopt did not build (e.g. tf_keras.applications)
as well as for its own. Which counts may shrink comes from the teacher's graph (kfopt.optimize.channels):
the head, the input and every count tied to them keep their size, tied counts shrink together. A
subclassed teacher has no graph to derive from: its student variants are skipped with that reason.
Loss per batch:

    alpha * CE(labels, student) + (1 - alpha) * T^2 * CE(teacher_T, student_T)

where *_T are the distributions softened at temperature T (from log-probabilities, as the models end
in softmax/sigmoid). The teacher's probabilities on the training split are computed once. The
weights with the best validation accuracy are kept. Variants:

    student              fp32 SavedModel
    student_tflite_int8  its full-integer int8 TFLite
    student_onnx_fp32    its ONNX export, and student_onnx_int8 its ORT static int8 (all three by CHAIN)

Distillation needs the teacher's own code: the baseline's framework (kfopt.json) must have the
"distill" capability, and the student is derived from a Keras layer graph (a model of another
framework gets skipped variants with the reason). The student's in-stage check against the baseline
is recorded in its kfopt.json, so the int8 pass that follows has only the rest of the budget.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import frameworks, passes, variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.export import child_meta
from kfopt.optimize import channels, checks
from kfopt.passes import FINE_TUNE_BATCH, onnx_export, ort_int8, tflite_int8
from kfopt.passes.check import SWITCHED_OFF, write_skipped

#: the passes that follow the student (kfopt.passes.follow)
CHAIN = (("tflite_int8",), ("onnx_export", "ort_int8"))
#: the frameworks whose layer graph a student is derived from here
DISTILLS = ("keras",)
LEARNING_RATE = 1e-3
EPS = 1e-7


def student_like(teacher, width: float):
    """The teacher's architecture with its free channel groups scaled by `width`, freshly initialised.

    kfopt.optimize.channels decides which filters/units may change (residual adds, squeeze-excite,
    Reshape targets, the head and the input stay consistent). A student that cannot be built from
    that plan is a ModelError naming the layer: this stage fails alone, the run goes on.
    """
    from kfopt.tfenv import keras

    k = keras()
    why_not = subclassed(teacher)
    if why_not:
        raise ModelError(f"No student: {why_not}. Switch distillation off (distill_enabled=false).")
    widths = channels.plan(teacher)
    if not widths.widths:
        raise ModelError("No channel count of this architecture can shrink: every filters/units count is the "
                         "input's, the output's, or tied to them; a student would be the teacher again.")
    config = teacher.get_config()
    for layer in config["layers"]:
        widths.apply(layer["config"], width)
    cls = k.Sequential if isinstance(teacher, k.Sequential) else k.Model
    try:
        student = cls.from_config(config)
    except Exception as exc:  # noqa: BLE001 - Keras' own error, said as which student could not be built
        raise ModelError(f"Cannot derive a width-{width} student from this architecture ({len(widths.widths)} "
                         f"layers scaled): {_keras_reason(exc)}") from exc
    if student.count_params() >= teacher.count_params():
        raise ModelError(f"The student ({student.count_params():,} parameters at width {width}) is not smaller "
                         f"than the teacher ({teacher.count_params():,}): no channel count of this architecture "
                         "can shrink without breaking a connection.")
    return student


def _keras_reason(exc: Exception) -> str:
    """Keras' build error in one line: the layer and the cause, not the layer's whole config."""
    text = str(exc).strip()
    if "Exception encountered:" in text:  # "Error when deserializing class 'Conv2D' using config={...}. Exception…"
        name = re.search(r"'name': '([^']+)'", text)
        cause = text.split("Exception encountered:", 1)[1].strip().splitlines()[0]
        return f"layer {name.group(1) if name else '?'}: {cause[:300]}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[:2])[:300]}" if lines else type(exc).__name__


def subclassed(model) -> str | None:
    """Why no student can be derived from `model` by design (a subclassed model has no config), or None."""
    from kfopt.tfenv import keras

    k = keras()
    if isinstance(model, k.Sequential) or getattr(model, "_is_graph_network", False):
        return None
    return ("distillation derives the student from the teacher's layer graph, and this is a subclassed Keras "
            "model, which has none")


def _losses(task: str, temperature: float, alpha: float):
    """The distillation loss. Soft terms are cross-entropies to the softened teacher: they differ from
    the KL divergence by the teacher's entropy, a constant that leaves the gradients unchanged."""
    from kfopt.tfenv import keras, tf

    t, losses = tf(), keras().losses

    def loss(y, teacher_probs, student_probs):
        if task == "binary":
            ps = t.clip_by_value(t.reshape(student_probs, [-1, 1]), EPS, 1 - EPS)
            pt = t.clip_by_value(t.reshape(teacher_probs, [-1, 1]), EPS, 1 - EPS)
            hard = t.reduce_mean(losses.binary_crossentropy(t.cast(t.reshape(y, [-1, 1]), t.float32), ps))
            target = t.sigmoid(t.math.log(pt / (1 - pt)) / temperature)
            soft = t.reduce_mean(t.nn.sigmoid_cross_entropy_with_logits(
                labels=target, logits=t.math.log(ps / (1 - ps)) / temperature))
        else:
            ps = t.clip_by_value(student_probs, EPS, 1.0)
            hard = t.reduce_mean(losses.sparse_categorical_crossentropy(y, ps))
            target = t.nn.softmax(t.math.log(t.clip_by_value(teacher_probs, EPS, 1.0)) / temperature)
            soft = -t.reduce_mean(t.reduce_sum(target * t.nn.log_softmax(t.math.log(ps) / temperature), axis=-1))
        return alpha * hard + (1 - alpha) * temperature ** 2 * soft

    return loss


def distill_model(teacher, ds: ds_mod.Dataset, *, width: float, temperature: float, alpha: float, epochs: int,
                  seed: int = 1):
    """Train the student; returns (student with its best validation weights, history)."""
    from kfopt import verify
    from kfopt.frameworks import keras as adapter
    from kfopt.tfenv import keras, tf

    t, k = tf(), keras()
    k.utils.set_random_seed(seed)
    student = student_like(teacher, width)
    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
    teacher_probs = adapter.predict(teacher, xt)
    data = (t.data.Dataset.from_tensor_slices((xt, yt, teacher_probs)).shuffle(len(xt), seed=seed)
            .batch(FINE_TUNE_BATCH))
    optimizer = k.optimizers.Adam(LEARNING_RATE)
    loss_fn = _losses(ds.schema.task, temperature, alpha)

    @t.function
    def step(x, y, tp):
        with t.GradientTape() as tape:
            loss = loss_fn(y, tp, student(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, student.trainable_variables), student.trainable_variables))
        return loss

    history: dict[str, list[float]] = {"loss": [], "val_accuracy": []}
    best, best_weights = -1.0, student.get_weights()
    for _ in range(epochs):
        losses = [float(step(x, y, tp)) for x, y, tp in data]
        acc = verify.quality(adapter.predict(student, xv), yv, ds.schema.task)["accuracy"]
        history["loss"].append(float(np.mean(losses)))
        history["val_accuracy"].append(acc)
        if acc > best:
            best, best_weights = acc, student.get_weights()
    student.set_weights(best_weights)
    return student, history


def variants(parent: variant.VariantMeta) -> list[tuple[str, str, str]]:
    """(name, format, target) of what this stage makes: the student and what its CHAIN makes from it."""
    return [("student", parent.format, "cpu"),
            *passes.chained_names(CHAIN, child_meta(parent, "student", technique="distill"))]


def why_not(parent: variant.VariantMeta) -> str | None:
    """Why no student can be distilled here from this baseline, from its kfopt.json."""
    lacking = passes.lacks(parent, "distill")
    if lacking or parent.framework in DISTILLS:
        return lacking
    return f"kfopt derives students from {'/'.join(DISTILLS)} layer graphs; this model is {parent.framework}"


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, enabled: bool = True, student_width: float = 0.5,
        temperature: float = 4.0, alpha: float = 0.1, epochs: int = 30, calibration_samples: int = 200,
        accuracy_budget: float = 0.5, min_agreement: float = 0.97, confidence: float = 0.95,
        fallback_max_attempts: int = 3,
        opset: int = 17, ort_search: tuple[str, ...] = ort_int8.SEARCH, bench_threads: tuple[int, ...] = (1,),
        bench_batch_sizes: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
    checks.distill(student_width, temperature, alpha, epochs)
    checks.budget(accuracy_budget, min_agreement, fallback_max_attempts)
    configs = {"tflite_int8": tflite_int8.Config(fallback_max_attempts, calibration_samples),
               "onnx_export": onnx_export.Config(opset),
               "ort_int8": ort_int8.Config(fallback_max_attempts, tuple(ort_search), bench_threads[0],
                                           tuple(bench_batch_sizes))}
    parent = variant.read(baseline_dir)
    if enabled and parent.framework == "torch" and not passes.lacks(parent, "distill"):
        from kfopt.optimize import torch_distill  # kfopt's own torch model: a narrower torch student

        return torch_distill.run(baseline_dir, dataset_dir, out_dir, student_width=student_width,
                                 temperature=temperature, alpha=alpha, epochs=epochs,
                                 calibration_samples=calibration_samples, accuracy_budget=accuracy_budget,
                                 min_agreement=min_agreement, confidence=confidence, configs=configs, chain=CHAIN)
    with variant.staged_dir(Path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        reason = SWITCHED_OFF if not enabled else why_not(parent)
        if reason:
            write_skipped(tmp, variants(parent), reason, "distill", parent.name)
            return {"variants": 0}
        adapter = frameworks.of(parent)
        teacher = adapter.load(baseline_dir)
        reason = subclassed(teacher)
        if reason:
            write_skipped(tmp, variants(parent), reason, "distill", parent.name)
            return {"variants": 0}
        ds = ds_mod.read(dataset_dir)
        ctx = passes.Context.for_stage(ds, baseline_dir, calibration_samples, accuracy_budget, min_agreement, work,
                                       confidence=confidence)
        start = time.perf_counter()
        student, history = distill_model(teacher, ds, width=student_width, temperature=temperature, alpha=alpha,
                                         epochs=epochs)
        from kfopt import verify

        xt, yt = ds.split("test")
        test_acc = verify.quality(adapter.predict(student, xt), yt, ds.schema.task)["accuracy"]
        meta = child_meta(parent, "student", technique="distill", params={
            "student_width": student_width, "temperature": temperature, "alpha": alpha, "epochs": epochs,
            "learning_rate": LEARNING_RATE}, extra={
            "parameters": int(student.count_params()), "teacher_parameters": int(teacher.count_params()),
            "test_accuracy": test_acc, "best_val_accuracy": max(history["val_accuracy"]), "history": history})
        adapter.save(student, tmp / "student")
        variant.write(tmp / "student", meta)
        ctx.check.record(tmp / "student")
        seconds = round(time.perf_counter() - start, 2)
        made = passes.follow(CHAIN, tmp / "student", tmp, ctx, configs)
    return {"student_parameters": int(student.count_params()), "teacher_parameters": int(teacher.count_params()),
            "student_test_accuracy": test_acc, "distill_seconds": seconds, "variants": 1 + len(made)}
