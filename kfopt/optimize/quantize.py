"""The quantize stage: the baseline through every quantization pass.

Variants (children of the baseline, or of its ONNX export for the ONNX ones):

    tflite_dynamic   int8 weights, float activations (no calibration)              target edge
    tflite_fp16      float16 weights                                               target edge
    tflite_int8      full integer, int8 input and output, calibrated (pass)        target edge
    onnx_int8        ORT static int8, the fastest passing setting searched (pass ort_int8)  target cpu
    onnx_int8_trt    symmetric QDQ with float bias, the form TensorRT parses        target gpu
                     (pass ort_int8_trt; slower on ORT than onnx_int8, hence its own variant)
    tflite_qat_int8  tfmot quantize_model, a short fine-tune, then int8 TFLite (pass qat)  target edge
    pt2e_qat_int8    torch only: torchao PT2E QAT, a short fine-tune, run by torch.compile (pass pt2e_qat)

The TFLite variants need a framework that converts to TFLite directly (kfopt.json's `framework` and
its adapter's capabilities); for another framework they are skipped with the reason. The ONNX passes
take any ONNX fp32 variant: the baseline itself when it is one, else its export through its adapter.
Calibration uses `calibration_samples` samples (not batches) of the training split; every pass checks
what it made against the baseline on the validation split (kfopt.passes.check) and the int8 passes
go through the accuracy-aware fallback (kfopt.passes.fallback).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from kfopt import frameworks, passes, variant
from kfopt.data import dataset as ds_mod
from kfopt.export import child_meta
from kfopt.optimize import checks
from kfopt.passes import onnx_export, ort_int8, ort_int8_trt, tflite_int8
from kfopt.passes import qat as qat_pass
from kfopt.passes.check import SWITCHED_OFF, write_skipped

VARIANTS = [("tflite_dynamic", "tflite", "edge"), ("tflite_fp16", "tflite", "edge"),
            ("tflite_int8", "tflite", "edge"), ("onnx_int8", "onnx", "cpu"), ("onnx_int8_trt", "onnx", "gpu"),
            ("tflite_qat_int8", "tflite", "edge")]
#: the weight-only TFLite conversions: name → (precision, mode, converter in kfopt.formats.tflite)
WEIGHT_ONLY = {"tflite_dynamic": ("dynamic-int8", "dynamic-range", "dynamic_range"),
               "tflite_fp16": ("fp16", "float16", "float16")}


def onnx_parent(baseline_dir: Path, parent: variant.VariantMeta, ctx: passes.Context, opset: int) -> Path:
    """The ONNX fp32 variant the ONNX passes take: the baseline itself when it is one, else its export
    (a baseline that cannot be exported is handed over as it is, and the passes say why they refuse it)."""
    if ort_int8.accepts(parent) or not onnx_export.accepts(parent):
        return Path(baseline_dir)
    passes.apply(onnx_export, baseline_dir, ctx.workdir, ctx, onnx_export.Config(opset))
    return ctx.workdir / onnx_export.name_for(parent)


def _weight_only(baseline_dir: Path, parent: variant.VariantMeta, tmp: Path,
                 timed: Callable[[str, Callable[[Path], variant.VariantMeta]], None]) -> None:
    from kfopt.formats import tflite as tflite_fmt

    why = passes.lacks(parent, "tflite")
    if why:
        for name, (precision, _, _) in WEIGHT_ONLY.items():
            variant.write_skipped(tmp / name, name, "tflite", "edge", why, technique="quantize", parent=parent.name,
                                  precision=precision)
        return
    model = frameworks.of(parent).load(baseline_dir)
    for name, (precision, mode, convert) in WEIGHT_ONLY.items():
        timed(name, lambda d, n=name, p=precision, m=mode, c=convert: tflite_fmt.write_variant(
            getattr(tflite_fmt, c)(model), d, child_meta(parent, n, technique="quantize", precision=p, target="edge",
                                                         params={"mode": m})))


def run(baseline_dir: Path, dataset_dir: Path, out_dir: Path, *, enabled: bool = True, calibration_samples: int = 200,
        qat: bool = True, qat_epochs: int = 2, accuracy_budget: float = 0.5, min_agreement: float = 0.97,
        fallback_max_attempts: int = 3, opset: int = 17,
        ort_search: tuple[str, ...] = ort_int8.SEARCH, bench_threads: tuple[int, ...] = (1,),
        bench_batch_sizes: tuple[int, ...] = (1, 64), search_time_budget_s: float = 60.0,
        confidence: float = 0.95) -> dict[str, Any]:
    """Write the quantized variants of the baseline into out_dir (one folder per variant)."""
    checks.budget(accuracy_budget, min_agreement, fallback_max_attempts)
    int8_cfg = tflite_int8.Config(fallback_max_attempts, calibration_samples)
    ort_cfg = ort_int8.Config(fallback_max_attempts, tuple(ort_search), bench_threads[0], tuple(bench_batch_sizes))
    if qat:
        qat_pass.Config(qat_epochs)  # bad settings fail before anything is made
    parent = variant.read(baseline_dir)
    metrics: dict[str, Any] = {}
    with variant.staged_dir(Path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        if not enabled:
            write_skipped(tmp, VARIANTS, SWITCHED_OFF, "quantize", parent.name)
            return {"variants": 0}
        ds = ds_mod.read(dataset_dir)
        ctx = passes.Context.for_stage(ds, baseline_dir, calibration_samples, accuracy_budget, min_agreement, work,
                                       search_time_budget_s, confidence=confidence)
        metrics["calibration_samples"] = len(ctx.samples)

        def timed(name: str, make: Callable[[Path], variant.VariantMeta]) -> None:
            start = time.perf_counter()
            meta = make(tmp / name)
            metrics[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
            if "fallback" in meta.extra:
                metrics[f"{name}_float_layers"] = len(meta.extra["fallback"]["float_layers"])
                metrics[f"{name}_in_stage_check_passed"] = meta.extra["fallback"]["passed"]

        _weight_only(baseline_dir, parent, tmp, timed)
        onnx_dir = onnx_parent(baseline_dir, parent, ctx, opset)
        steps = [(tflite_int8, int8_cfg, Path(baseline_dir)), (ort_int8, ort_cfg, onnx_dir),
                 (ort_int8_trt, ort_int8_trt.Config(fallback_max_attempts), onnx_dir)]
        if parent.format == "torch":  # PT2E works on the exported graph: any torch program, brought ones too
            from kfopt.passes import pt2e_int8, pt2e_qat, torch_compile  # torch_compile: PT2E's fp32 reference, same runner

            steps += [(torch_compile, torch_compile.Config(), Path(baseline_dir)),
                      (pt2e_int8, pt2e_int8.Config(), Path(baseline_dir))]
            if qat:  # PT2E QAT also works on the exported graph: brought programs get it too
                steps.append((pt2e_qat, pt2e_qat.Config(qat_epochs), Path(baseline_dir)))
            else:
                write_skipped(tmp, [(pt2e_qat.name_for(parent), pt2e_qat.FORMAT, pt2e_qat.TARGET)], SWITCHED_OFF,
                              "qat", parent.name)
        if qat:
            steps.append((qat_pass, qat_pass.Config(qat_epochs), Path(baseline_dir)))
        else:
            write_skipped(tmp, VARIANTS[-1:], SWITCHED_OFF, "qat", parent.name)
        for step, cfg, source in steps:
            name = step.name_for(variant.read(source, verify=False))
            timed(name, lambda d, s=step, c=cfg, src=source: passes.apply(s, src, d.parent, ctx, c))
        metrics["variants"] = len(variant.discover(tmp))
    return metrics
