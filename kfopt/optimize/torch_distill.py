"""Distillation for kfopt's own torch models: the narrowest student of the same architecture that still answers
like the baseline, and the fine-tune that recovers a pruned torch model (kfopt.optimize.torch_prune) uses the same
loss.

A student is `torch_architectures.build(architecture, width=...)`: the same layers with that fraction of the
filters/units; the width is searched as for a Keras student (kfopt.optimize.student_search: bisection from the
widest, the narrowest passing the in-stage check kept). Its loss mixes the labels' cross-entropy (weight
`alpha`) with the teacher's outputs softened by `temperature` (Hinton's KD, scaled by T²). The teacher's
outputs are computed once per stage (`teacher_outputs`) and shared by every width; each student starts from
the teacher's leading channels (`inherit_weights`) and trains to
early stopping on the validation loss with the learning rate halved on plateaus (kfopt.optimize.recipe),
best weights restored, seeded from the baseline's training seed. Then the distill stage's CHAIN follows
(ONNX export → ORT int8; TFLite int8 is skipped with the reason, a torch student has no direct TFLite path).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import passes, search, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.export import child_meta
from kfopt.optimize import recipe, student_search
from kfopt.passes import FINE_TUNE_BATCH

LEARNING_RATE = 1e-3


@dataclasses.dataclass
class TeacherOutputs:
    """What a student learns from and is kept by: the teacher's logits on the training rows (as stored: an
    augmented split's copies are rows of their own) and its answers on the validation rows."""

    train_logits: Any  # torch.Tensor
    val_answers: Any  # torch.Tensor


def _answers(module, inputs, binary: bool):
    import torch

    with torch.no_grad():
        z = module.logits(inputs)
    return (z.squeeze(-1) > 0).long() if binary else z.argmax(-1)


def _tensors(ds: ds_mod.Dataset, split: str):
    import torch

    x, y = ds.split(split)
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y.astype(np.int64))


def teacher_outputs(teacher, ds: ds_mod.Dataset) -> TeacherOutputs:
    """The teacher run once over the training and validation splits."""
    import torch

    teacher.eval()
    with torch.no_grad():
        logits = teacher.logits(_tensors(ds, "train")[0])
    return TeacherOutputs(logits, _answers(teacher, _tensors(ds, "val")[0], ds.schema.task == "binary"))


def distill_into(student, teacher, ds: ds_mod.Dataset, *, epochs: int, seed: int, temperature: float,
                 alpha: float, keep: str = "accuracy", patience: int | None = None,
                 targets: TeacherOutputs | None = None) -> dict[str, list[float]]:
    """Train `student` on the labels (weight `alpha`) and `teacher`'s softened outputs; keep the epoch with the
    best validation `keep` ("accuracy", "agreement" with the teacher, or the lowest "loss"). Returns them per epoch.

    `patience` None runs every epoch at a constant learning rate; a number stops after that many epochs
    without a better `keep` (an accuracy's ties broken by the validation loss), the rate halving on plateaus
    (kfopt.optimize.recipe). `targets` are the
    teacher's outputs computed once (teacher_outputs); without them the teacher runs here.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    binary = ds.schema.task == "binary"
    (x, y), (x_val, y_val) = _tensors(ds, "train"), _tensors(ds, "val")
    targets = targets or teacher_outputs(teacher, ds)
    soft = targets.train_logits / temperature
    plateau = recipe.Plateau(LEARNING_RATE, patience)
    optimizer = torch.optim.Adam(student.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"val_accuracy": [], "val_agreement": [], "val_loss": [], "learning_rate": []}
    best_state = None
    for _ in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = plateau.learning_rate
        history["learning_rate"].append(plateau.learning_rate)
        student.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(order), FINE_TUNE_BATCH):
            idx = order[i:i + FINE_TUNE_BATCH]
            optimizer.zero_grad()
            z = student.logits(x[idx])
            if binary:
                hard = F.binary_cross_entropy_with_logits(z.squeeze(-1), y[idx].float())
                kd = F.binary_cross_entropy_with_logits(z / temperature, torch.sigmoid(soft[idx]))
            else:
                hard = F.cross_entropy(z, y[idx])
                kd = F.kl_div(F.log_softmax(z / temperature, -1), F.softmax(soft[idx], -1), reduction="batchmean")
            (alpha * hard + (1 - alpha) * kd * temperature ** 2).backward()
            optimizer.step()
        student.eval()
        with torch.no_grad():
            z = student.logits(x_val)
        got = (z.squeeze(-1) > 0).long() if binary else z.argmax(-1)
        loss = (F.binary_cross_entropy_with_logits(z.squeeze(-1), y_val.float()) if binary
                else F.cross_entropy(z, y_val))
        history["val_accuracy"].append(round(float((got == y_val).float().mean()), 4))
        history["val_agreement"].append(round(float((got == targets.val_answers).float().mean()), 4))
        history["val_loss"].append(round(float(loss), 5))
        if plateau.update(recipe.score(history, f"val_{keep}")):
            best_state = copy.deepcopy(student.state_dict())
        if plateau.stop:
            break
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    return history


def inherit_weights(student, teacher) -> int:
    """Start the student from the teacher: each tensor of its state the leading slice of the teacher's (the
    first k channels everywhere keep every connection, as for a Keras student). Returns the tensors inherited."""
    own, given = student.state_dict(), teacher.state_dict()
    inherited = 0
    for name, tensor in own.items():
        source = given.get(name)
        if source is None or source.ndim != tensor.ndim or any(m > t for m, t in zip(tensor.shape, source.shape)):
            continue
        own[name] = source[tuple(slice(0, n) for n in tensor.shape)].clone()
        inherited += 1
    student.load_state_dict(own)
    return inherited


def _count(module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def searched_student(teacher, architecture: str, ds: ds_mod.Dataset, ctx: passes.Context,
                     widths: tuple[float, ...], *, temperature: float, alpha: float, epochs: int, patience: int,
                     seed: int):
    """(kept width, its Student, the search record) over torch students of `architecture`."""
    import torch

    from kfopt.frameworks import torch as adapter
    from kfopt.models import torch_architectures

    started = time.perf_counter()
    targets = teacher_outputs(teacher, ds)
    teacher_seconds = round(time.perf_counter() - started, 2)

    def train(width: float) -> student_search.Student:
        torch.manual_seed(seed)  # the same initial weights for the same width and seed
        student = torch_architectures.build(architecture, ds.schema.feature_shape, ds.schema.num_classes, width)
        inherit_weights(student, teacher)
        history = distill_into(student, teacher, ds, epochs=epochs, seed=seed, temperature=temperature,
                               alpha=alpha, keep=student_search.MONITOR.removeprefix("val_"), patience=patience,
                               targets=targets)
        return student_search.Student(student, _count(student), history, adapter.predict(student, ctx.check.x))

    return student_search.search(widths, train, ctx, epochs, teacher_outputs_seconds=teacher_seconds)


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, widths: tuple[float, ...],
        recipe_params: dict[str, Any], calibration_samples: int, accuracy_budget: float, min_agreement: float,
        confidence: float, search_time_budget_s: float, configs: dict[str, Any], chain) -> dict[str, Any]:
    """The kept student of the torch baseline at `baseline_dir`, then `chain`, under `out_dir`.

    `recipe_params` are the distill stage's checked settings (temperature, alpha, epochs, patience, ...)."""
    from kfopt.frameworks import torch as adapter

    parent = variant.read(baseline_dir)
    with variant.staged_dir(Path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        ds = ds_mod.read(dataset_dir)
        ctx = passes.Context.for_stage(ds, baseline_dir, calibration_samples, accuracy_budget, min_agreement, work,
                                       search_time_budget_s, confidence)
        start = time.perf_counter()
        teacher = adapter.load(baseline_dir)
        seed = int(parent.params.get("seed", 1))
        width, kept, record = searched_student(
            teacher, parent.params["architecture"], ds, ctx, widths, seed=seed,
            **{k: recipe_params[k] for k in ("temperature", "alpha", "epochs", "patience")})
        xt, yt = ds.split("test")
        test_acc = verify.quality(adapter.predict(kept.model, xt), yt, ds.schema.task)["accuracy"]
        meta = child_meta(parent, "student", technique="distill", params={
            "student_width": width, **recipe_params, "learning_rate": LEARNING_RATE, "seed": seed,
            "init": "the teacher's leading channels of every tensor (inherit_weights)"}, extra={
            "parameters": kept.parameters, "teacher_parameters": _count(teacher), "test_accuracy": test_acc,
            "recipe": recipe.summary(kept.history, student_search.MONITOR, recipe_params["epochs"]),
            "history": kept.history, search.KEY: record})
        adapter.save(kept.model, tmp / "student")
        variant.write(tmp / "student", meta)
        ctx.check.record(tmp / "student")
        seconds = round(time.perf_counter() - start, 2)
        made = passes.follow(chain, tmp / "student", tmp, ctx, configs)
    return {"student_width": width, "widths_tried": len(record["points"]), "student_parameters": kept.parameters,
            "teacher_parameters": _count(teacher), "student_test_accuracy": test_acc, "distill_seconds": seconds,
            "variants": 1 + len(made)}
