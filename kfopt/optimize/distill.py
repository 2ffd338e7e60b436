"""The distill stage: the narrowest student that still answers like the trained baseline (the teacher), then int8.

A student is the teacher's own architecture with its filters/units scaled by a width, rebuilt from the
Keras config, so it works for models kfopt did not build (e.g. tf_keras.applications) as well as for its
own. Which counts may shrink comes from the teacher's graph (kfopt.optimize.channels): the head, the
input and every count tied to them keep their size, tied counts shrink together. A subclassed teacher
has no graph to derive from: its student variants are skipped with that reason.

The width is searched (kfopt.optimize.student_search): `distill.student_width` is the space, tried by
bisection from the widest within `search.time_budget_s`; the narrowest student that passes the in-stage
check with its accuracy-delta estimate within the budget is kept, and every width tried is recorded in
its kfopt.json (`extra["search"]`). Loss per batch:

    alpha * CE(labels, student) + (1 - alpha) * T^2 * CE(teacher_T, student_T)

where *_T are the distributions softened at temperature T (from log-probabilities, as the models end
in softmax/sigmoid). The teacher's probabilities on the training split are computed once per stage and
shared by every width. A student starts from the teacher's own weights, the leading channels of each
layer (`inherit_weights`), not from a random draw: measured on a brought MobileNetV2 (alpha 0.5, 32×32
digits), the width-0.75 student lost 5.9 pp from scratch in 23 epochs and 1.1 pp inherited in 16; on the
digits CNN the three-width search took 11.5 s of training instead of 29 s. Each student trains to
early stopping on the validation loss with the learning rate halved on plateaus (kfopt.optimize.recipe),
`distill.epochs` at most, best weights restored, seeded from the baseline's training seed. Variants (of
the kept student only):

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

from kfopt import frameworks, passes, search, variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError
from kfopt.export import child_meta
from kfopt.optimize import channels, checks, recipe, student_search
from kfopt.passes import FINE_TUNE_BATCH, onnx_export, ort_int8, tflite_int8
from kfopt.passes.check import SWITCHED_OFF, write_skipped

#: the passes that follow the student (kfopt.passes.follow)
CHAIN = (("tflite_int8",), ("onnx_export", "ort_int8"))
#: the frameworks whose layer graph a student is derived from here
DISTILLS = ("keras",)
#: the default width search space (distill.student_width), widest first
WIDTHS = (0.75, 0.5, 0.25)
LEARNING_RATE = 1e-3  # the start: it halves on validation plateaus (kfopt.optimize.recipe)
PATIENCE = 5
SCHEDULE = "Adam, halved after patience/2 epochs without a lower validation loss; stop after patience"
INIT = "the teacher's leading channels of every layer (inherit_weights)"
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


def _label_loss(probs: np.ndarray, y: np.ndarray, task: str) -> float:
    """The cross-entropy of probabilities against the labels: the validation loss early stopping watches."""
    if task == "binary":
        p = np.clip(probs.reshape(-1), EPS, 1 - EPS)
        return float(-np.mean(np.where(y.reshape(-1) == 1, np.log(p), np.log(1 - p))))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y.astype(int)], EPS, 1.0))))


def inherit_weights(student, teacher) -> int:
    """Start the student from the teacher: each of its weight tensors the leading slice of the teacher's.

    Tied channel counts shrink together (kfopt.optimize.channels), so taking the first k channels
    everywhere keeps every connection consistent: a layer's first k outputs feed the next layer's first k
    inputs, both sides of a residual add hold the same k. (A Dense after a Flatten gets rows that are not
    its channels' own, a teacher-scaled start the training corrects.) Returns the layers inherited.
    """
    inherited = 0
    for mine, theirs in zip(student.layers, teacher.layers):  # one architecture: the same layers in order
        own, given = mine.get_weights(), theirs.get_weights()
        if not own or len(own) != len(given) or any(
                a.ndim != b.ndim or any(m > t for m, t in zip(a.shape, b.shape)) for a, b in zip(own, given)):
            continue
        mine.set_weights([b[tuple(slice(0, n) for n in a.shape)] for a, b in zip(own, given)])
        inherited += 1
    return inherited


def soft_targets(teacher, x: np.ndarray) -> np.ndarray:
    """The teacher's probabilities on the training rows: computed once per stage, shared by every width tried.

    They are of the rows as stored: an augmented training split (kfopt.data.augment) holds its augmented
    copies as rows, so each copy has its own target; nothing is augmented on the fly here.
    """
    from kfopt.frameworks import keras as adapter

    return adapter.predict(teacher, x)


def distill_model(teacher, ds: ds_mod.Dataset, *, width: float, temperature: float, alpha: float, epochs: int,
                  patience: int | None = PATIENCE, seed: int = 1, teacher_probs: np.ndarray | None = None,
                  inherit: bool = True):
    """Train the student to early stopping; returns (student with its best validation weights, history).

    The student starts from the teacher's leading channels (`inherit`; False: a fresh draw). `epochs` is the
    most it trains; it stops after `patience` epochs without a lower validation loss
    (None: runs them all), the learning rate halving on plateaus (kfopt.optimize.recipe). The same seed gives
    the same student. `teacher_probs` are the teacher's outputs on the training split (soft_targets).
    """
    from kfopt import verify
    from kfopt.frameworks import keras as adapter
    from kfopt.tfenv import keras, tf

    t, k = tf(), keras()
    k.utils.set_random_seed(seed)
    student = student_like(teacher, width)
    if inherit:
        inherit_weights(student, teacher)
    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
    if teacher_probs is None:
        teacher_probs = soft_targets(teacher, xt)
    data = (t.data.Dataset.from_tensor_slices((xt, yt, teacher_probs)).shuffle(len(xt), seed=seed)
            .batch(FINE_TUNE_BATCH))
    plateau = recipe.Plateau(LEARNING_RATE, patience)
    optimizer = k.optimizers.Adam(LEARNING_RATE)
    loss_fn = _losses(ds.schema.task, temperature, alpha)

    @t.function
    def step(x, y, tp):
        with t.GradientTape() as tape:
            loss = loss_fn(y, tp, student(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, student.trainable_variables), student.trainable_variables))
        return loss

    history: dict[str, list[float]] = {"loss": [], "val_accuracy": [], "val_loss": [], "learning_rate": []}
    best_weights = student.get_weights()
    for _ in range(epochs):
        optimizer.learning_rate.assign(plateau.learning_rate)
        history["learning_rate"].append(plateau.learning_rate)
        losses = [float(step(x, y, tp)) for x, y, tp in data]
        probs = adapter.predict(student, xv)
        history["loss"].append(float(np.mean(losses)))
        history["val_accuracy"].append(verify.quality(probs, yv, ds.schema.task)["accuracy"])
        history["val_loss"].append(_label_loss(probs, yv, ds.schema.task))
        if plateau.update(recipe.score(history, student_search.MONITOR)):
            best_weights = student.get_weights()
        if plateau.stop:
            break
    student.set_weights(best_weights)
    return student, history


def searched_student(teacher, ds: ds_mod.Dataset, ctx: passes.Context, widths: tuple[float, ...], *,
                     temperature: float, alpha: float, epochs: int, patience: int, seed: int):
    """(kept width, its Student, the search record): kfopt.optimize.student_search over Keras students,
    all trained on one set of teacher outputs."""
    from kfopt.frameworks import keras as adapter

    started = time.perf_counter()
    probs = soft_targets(teacher, ds.split("train")[0])
    teacher_seconds = round(time.perf_counter() - started, 2)

    def train(width: float) -> student_search.Student:
        student, history = distill_model(teacher, ds, width=width, temperature=temperature, alpha=alpha,
                                         epochs=epochs, patience=patience, seed=seed, teacher_probs=probs)
        return student_search.Student(student, int(student.count_params()), history,
                                      adapter.predict(student, ctx.check.x))

    return student_search.search(widths, train, ctx, epochs, teacher_outputs_seconds=teacher_seconds)


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


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, enabled: bool = True,
        student_width: float | tuple[float, ...] = WIDTHS, temperature: float = 4.0, alpha: float = 0.1,
        epochs: int = 30, patience: int = PATIENCE, calibration_samples: int = 200, accuracy_budget: float = 0.5,
        min_agreement: float = 0.97, fallback_max_attempts: int = 3, opset: int = 17,
        ort_search: tuple[str, ...] = ort_int8.SEARCH, bench_threads: tuple[int, ...] = (1,),
        bench_batch_sizes: tuple[int, ...] = (1, 64), search_time_budget_s: float = 60.0,
        confidence: float = 0.95) -> dict[str, Any]:
    """The kept student of the width search and its CHAIN under `out_dir` (`student_width`: the widths
    to search, or one width)."""
    widths = checks.distill(student_width, temperature, alpha, epochs, patience)
    checks.budget(accuracy_budget, min_agreement, fallback_max_attempts)
    configs = {"tflite_int8": tflite_int8.Config(fallback_max_attempts, calibration_samples),
               "onnx_export": onnx_export.Config(opset),
               "ort_int8": ort_int8.Config(fallback_max_attempts, tuple(ort_search), bench_threads[0],
                                           tuple(bench_batch_sizes))}
    parent = variant.read(baseline_dir)
    recipe_params = {"temperature": temperature, "alpha": alpha, "epochs": epochs, "patience": patience,
                     "learning_rate": LEARNING_RATE, "schedule": SCHEDULE, "searched_widths": list(widths)}
    if enabled and parent.framework == "torch" and not passes.lacks(parent, "distill"):
        from kfopt.optimize import torch_distill  # kfopt's own torch model: a narrower torch student

        return torch_distill.run(baseline_dir, dataset_dir, out_dir, widths=widths, recipe_params=recipe_params,
                                 calibration_samples=calibration_samples, accuracy_budget=accuracy_budget,
                                 min_agreement=min_agreement, confidence=confidence,
                                 search_time_budget_s=search_time_budget_s, configs=configs, chain=CHAIN)
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
                                       search_time_budget_s, confidence)
        start = time.perf_counter()
        seed = int(parent.params.get("seed", 1))
        width, kept, record = searched_student(teacher, ds, ctx, widths, temperature=temperature, alpha=alpha,
                                               epochs=epochs, patience=patience, seed=seed)
        meta = student_meta(parent, kept, width, int(teacher.count_params()), ds, adapter,
                            {**recipe_params, "seed": seed, "init": INIT}, record)
        adapter.save(kept.model, tmp / "student")
        variant.write(tmp / "student", meta)
        ctx.check.record(tmp / "student")
        seconds = round(time.perf_counter() - start, 2)
        made = passes.follow(CHAIN, tmp / "student", tmp, ctx, configs)
    return {"student_width": width, "widths_tried": len(record["points"]), "student_parameters": kept.parameters,
            "teacher_parameters": meta.extra["teacher_parameters"],
            "student_test_accuracy": meta.extra["test_accuracy"], "distill_seconds": seconds, "variants": 1 + len(made)}


def student_meta(parent: variant.VariantMeta, kept: student_search.Student, width: float, teacher_parameters: int,
                 ds: ds_mod.Dataset, adapter, params: dict[str, Any], record: dict[str, Any]) -> variant.VariantMeta:
    """The kept student's kfopt.json: its width and recipe, how its training went, every width tried."""
    from kfopt import verify

    xt, yt = ds.split("test")
    test_acc = verify.quality(adapter.predict(kept.model, xt), yt, ds.schema.task)["accuracy"]
    return child_meta(parent, "student", technique="distill", params={"student_width": width, **params}, extra={
        "parameters": kept.parameters, "teacher_parameters": teacher_parameters, "test_accuracy": test_acc,
        "recipe": recipe.summary(kept.history, student_search.MONITOR, params["epochs"]), "history": kept.history,
        search.KEY: record})
