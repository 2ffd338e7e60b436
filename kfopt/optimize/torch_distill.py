"""Distillation for kfopt's own torch models: a narrower student of the same architecture learns from the
baseline, and the fine-tune that recovers a pruned torch model (kfopt.optimize.torch_prune) uses the same loss.

The student is `torch_architectures.build(architecture, width=student_width)`: the same layers with
`student_width` of the filters/units. Its loss mixes the labels' cross-entropy (weight `alpha`) with the
teacher's outputs softened by `temperature` (Hinton's KD, scaled by T²); the epoch with the best
validation accuracy is kept, as for a Keras student. Then the distill stage's CHAIN follows (ONNX export
→ ORT int8; TFLite int8 is skipped with the reason, a torch student has no direct TFLite path).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import passes, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.export import child_meta
from kfopt.passes import FINE_TUNE_BATCH

LEARNING_RATE = 1e-3


def distill_into(student, teacher, ds: ds_mod.Dataset, *, epochs: int, seed: int, temperature: float,
                 alpha: float, keep: str = "accuracy") -> dict[str, list[float]]:
    """Train `student` on the labels (weight `alpha`) and `teacher`'s softened outputs; keep the epoch with the
    best validation `keep` ("accuracy", or "agreement" with the teacher). Returns both per epoch."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    binary = ds.schema.task == "binary"
    (xt, yt), (xv, yv) = ds.split("train"), ds.split("val")
    x, y = torch.from_numpy(np.ascontiguousarray(xt, np.float32)), torch.from_numpy(yt.astype(np.int64))
    x_val, y_val = torch.from_numpy(np.ascontiguousarray(xv, np.float32)), torch.from_numpy(yv.astype(np.int64))

    def answers(module, inputs):
        with torch.no_grad():
            z = module.logits(inputs)
        return (z.squeeze(-1) > 0).long() if binary else z.argmax(-1)

    teacher.eval()
    with torch.no_grad():
        soft = teacher.logits(x) / temperature
    teacher_val = answers(teacher, x_val)
    optimizer = torch.optim.Adam(student.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"val_accuracy": [], "val_agreement": []}
    best, best_state = -1.0, None
    for _ in range(epochs):
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
        got = answers(student, x_val)
        history["val_accuracy"].append(round(float((got == y_val).float().mean()), 4))
        history["val_agreement"].append(round(float((got == teacher_val).float().mean()), 4))
        if history[f"val_{keep}"][-1] > best:
            best, best_state = history[f"val_{keep}"][-1], copy.deepcopy(student.state_dict())
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    return history


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, student_width: float, temperature: float,
        alpha: float, epochs: int, calibration_samples: int, accuracy_budget: float, min_agreement: float,
        confidence: float,
        configs: dict[str, Any], chain) -> dict[str, Any]:
    """The student of the torch baseline at `baseline_dir`, then `chain`, under `out_dir`."""
    from kfopt.frameworks import torch as adapter
    from kfopt.models import torch_architectures

    parent = variant.read(baseline_dir)
    with variant.staged_dir(Path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        ds = ds_mod.read(dataset_dir)
        ctx = passes.Context.for_stage(ds, baseline_dir, calibration_samples, accuracy_budget, min_agreement, work,
                                       confidence=confidence)
        start = time.perf_counter()
        teacher = adapter.load(baseline_dir)
        student = torch_architectures.build(parent.params["architecture"], ds.schema.feature_shape,
                                            ds.schema.num_classes, student_width)
        history = distill_into(student, teacher, ds, epochs=epochs, seed=int(parent.params.get("seed", 1)),
                               temperature=temperature, alpha=alpha)
        xt, yt = ds.split("test")
        test_acc = verify.quality(adapter.predict(student, xt), yt, ds.schema.task)["accuracy"]
        count = lambda m: sum(int(p.numel()) for p in m.parameters())  # noqa: E731
        meta = child_meta(parent, "student", technique="distill", params={
            "student_width": student_width, "temperature": temperature, "alpha": alpha, "epochs": epochs,
            "learning_rate": LEARNING_RATE}, extra={
            "parameters": count(student), "teacher_parameters": count(teacher), "test_accuracy": test_acc,
            "best_val_accuracy": max(history["val_accuracy"]), "history": history})
        adapter.save(student, tmp / "student")
        variant.write(tmp / "student", meta)
        ctx.check.record(tmp / "student")
        seconds = round(time.perf_counter() - start, 2)
        made = passes.follow(chain, tmp / "student", tmp, ctx, configs)
    return {"student_parameters": count(student), "teacher_parameters": count(teacher),
            "student_test_accuracy": test_acc, "distill_seconds": seconds, "variants": 1 + len(made)}
