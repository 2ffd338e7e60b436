"""The OpenVINO pass: every ONNX fp32 variant it is given → OpenVINO IR in fp32 and NNCF int8.

    openvino_fp32   openvino.convert_model of the ONNX, saved with compress_to_fp16=False     target cpu
    openvino_int8   nncf.quantize on `calibration_samples` training samples; when the in-stage
                    check misses the budget, nncf.quantize_with_accuracy_control             target cpu

A variant is accepted by its kfopt.json (format onnx, precision fp32), never by its name, so a pruned
or distilled model exported to ONNX gets the same pass. The variants of the export's `onnx_fp32` are
named `openvino_fp32`/`openvino_int8`; those of a pruned model's ONNX `pruned_50_openvino_fp32`/`_int8`.

Two checks, both against the *baseline* (not the ONNX parent, so a chained variant cannot spend the
budget twice):

- the in-stage check (kfopt.passes.check.InStageCheck, validation split, with the budget the ONNX
  parent left) decides whether int8 needs the accuracy-controlled fallback, whose allowed drop is that
  budget; recorded as the other passes record it (`extra["in_stage_check"]`, attempts in `extra["fallback"]`);
- the per-batch verification runs the test split through the variant at every batch size the
  benchmark times, each through its own static-shape program at the benchmark's thread count, and
  records the result in `extra["batch_verification"]` (`batches["<b>"]`: passed, reason, agreement,
  accuracy delta, max abs error; `failing`: the batch sizes that failed). OpenVINO int8 has answered
  correctly at batch 64 and wrongly at batch 1 on this CPU; kfopt.select never picks a variant at a
  batch size listed there.

NNCF calibrates and validates a copy of the model with a static batch of 1 (its dynamic-batch
programs are the ones that went wrong); the saved IR has a dynamic batch again.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kfopt import formats, variant, verify
from kfopt.config import thread_counts
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError, KfoptError
from kfopt.export import child_meta
from kfopt.formats import onnx as onnx_fmt
from kfopt.formats import openvino as ov_fmt
from kfopt.optimize import checks
from kfopt.passes import knob, lineage, technique
from kfopt.passes.check import KEY as IN_STAGE
from kfopt.passes.check import SWITCHED_OFF, InStageCheck, calibration_set

TECHNIQUE = "openvino"
KINDS = ("fp32", "int8")
# The export stage's ONNX variant; its children get the short names.
EXPORT_ONNX = "onnx_fp32"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the pass: default, where it is configured, what it does; checked in one place."""

    enabled: bool = knob(True, "openvino.enabled",
                         "Make OpenVINO IR variants (fp32 and NNCF int8) of the ONNX fp32 variants.")
    calibration_samples: int = knob(200, "quantize.calibration_samples",
                                    "Training samples NNCF calibrates int8 on (not batches).")
    batch_sizes: tuple[int, ...] = knob((1, 64), "bench.batch_sizes",
                                        "Batch sizes each variant is verified at: the ones the benchmark times.")
    accuracy_budget: float = knob(0.5, "verify.accuracy_budget",
                                  "Percentage points of accuracy a variant may lose against the baseline.")
    min_agreement: float = knob(0.97, "verify.min_agreement",
                                "Least top-1 agreement with the baseline's predictions.")
    fallback_max_attempts: int = knob(3, "quantize.fallback_max_attempts",
                                      "Iterations of nncf.quantize_with_accuracy_control when int8 misses "
                                      "the in-stage check (0: no fallback).")
    threads: int = knob(1, "bench.threads",
                        "INFERENCE_NUM_THREADS of the programs verified here (the first of the benchmark's counts).")
    confidence: float = knob(0.95, "verify.confidence",
                             "Confidence of the accuracy delta's interval: only a confidently larger loss fails.")

    def __post_init__(self) -> None:
        checks.budget(self.accuracy_budget, self.min_agreement, self.fallback_max_attempts)
        if self.calibration_samples < 1:
            raise ConfigError(f"calibration_samples must be at least 1, got {self.calibration_samples}.")
        if not self.batch_sizes or not all(isinstance(b, int) and b >= 1 for b in self.batch_sizes):
            raise ConfigError(f"OpenVINO batch sizes must be a non-empty list of positive integers, "
                              f"got {self.batch_sizes}; use the benchmark's batch sizes, e.g. [1, 64].")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}.")


def accepts(meta: variant.VariantMeta) -> bool:
    """The variants this pass converts: made (not skipped), ONNX, fp32 — as kfopt.json says."""
    return meta.status == "ok" and meta.format == "onnx" and meta.precision == "fp32"


def names(parent: variant.VariantMeta) -> dict[str, str]:
    """`openvino_int8` from the baseline's ONNX, `pruned_50_openvino_int8` from a pruned model's (see lineage)."""
    return {kind: f"{lineage(parent)}openvino_{kind}" for kind in KINDS}


@dataclasses.dataclass
class Reference:
    """The baseline's answers on the validation split (in-stage check) and the test split (verification)."""

    in_stage: InStageCheck
    x_test: np.ndarray
    y_test: np.ndarray
    test: np.ndarray

    @classmethod
    def of(cls, baseline_dir: Path, ds: ds_mod.Dataset, cfg: Config) -> "Reference":
        from kfopt import bench

        runner = formats.load(baseline_dir)
        (xv, yv), (xt, yt) = ds.split("val"), ds.split("test")
        in_stage = InStageCheck(xv, yv, bench.predict_all(runner, xv), ds.schema.task, cfg.accuracy_budget,
                                cfg.min_agreement, confidence=cfg.confidence)
        return cls(in_stage, xt, yt, bench.predict_all(runner, xt))


def predict_in_batches(runner, x: np.ndarray, batch: int) -> np.ndarray:
    """Every row through the program for exactly `batch` rows (the last chunk padded, padding dropped)."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(x[:1], batch - len(chunk), axis=0)])
        out.append(runner.predict(chunk)[:min(batch, len(x) - i)])
    return np.concatenate(out)


def verify_batches(vdir: Path, ref: Reference, cfg: Config) -> dict[str, Any]:
    """The variant against the baseline on the test split at each batch size, recorded in kfopt.json."""
    runner = formats.load(vdir, threads=cfg.threads)
    batches: dict[str, Any] = {}
    for batch in sorted(set(cfg.batch_sizes)):
        try:
            probs = predict_in_batches(runner, ref.x_test, batch)
        except KfoptError as exc:  # a program that does not compile answers nothing at that batch
            batches[str(batch)] = {"passed": False, "reason": str(exc)}
            continue
        batches[str(batch)] = verify.compare(probs, ref.test, ref.y_test, ref.in_stage.task, cfg.accuracy_budget,
                                             cfg.min_agreement, cfg.confidence)
    meta = variant.read(vdir)
    meta.extra["batch_verification"] = {
        "against": "baseline", "split": "test", "samples": int(len(ref.y_test)), "threads": cfg.threads,
        "batches": batches, "failing": [int(b) for b, r in batches.items() if not r["passed"]],
        "runtime": runner.runtime_config}
    variant.write(vdir, meta)
    return meta.extra["batch_verification"]


def _static(model, meta: variant.VariantMeta):
    return ov_fmt.with_batch(model, 1, meta.input.shape[1:])


def _fake_quantizers(model) -> set[str]:
    return {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"}


def fallback_target(result: dict[str, Any], left_pp: float, min_agreement: float) -> tuple[str, float]:
    """The metric quantize_with_accuracy_control restores, and its allowed absolute drop, for what the check missed.

    NNCF controls one metric. A missed accuracy budget alone: accuracy, `left_pp` of drop. A missed
    agreement: top-1 agreement with the baseline, 1 - min_agreement of drop, tightened to `left_pp`
    when accuracy missed too (each disagreement costs at most one correct answer, so that bounds both).
    """
    accuracy_missed = -result.get("accuracy_delta_pp", 0.0) > left_pp + 1e-9
    if result.get("agreement", 1.0) >= min_agreement:
        return "accuracy", max(left_pp, 0.0) / 100
    return "agreement", max(min(1 - min_agreement, left_pp / 100 if accuracy_missed else 1.0), 0.0)


class Int8:
    """NNCF int8 of one fp32 openvino.Model, calibrated and validated at a static batch of 1."""

    def __init__(self, model, parent: variant.VariantMeta, samples: np.ndarray, check: InStageCheck):
        import nncf

        self.nncf, self.parent, self.check = nncf, parent, check
        self.model = _static(model, parent)
        self.calibration = nncf.Dataset([samples[i:i + 1] for i in range(len(samples))])
        self.subset = len(samples)

    def quantize(self):
        return self.nncf.quantize(self.model, self.calibration, subset_size=self.subset)

    def with_accuracy_control(self, metric: str, max_drop: float, iterations: int):
        """Quantizers removed, most harmful first, until `metric` on the validation split drops at most `max_drop`."""
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        nncf, check = self.nncf, self.check
        wanted = check.y if metric == "accuracy" else verify.labels(check.reference, check.task)

        def validate(compiled, items) -> tuple[float, list[float]]:
            hits = [float(verify.labels(np.asarray(compiled(xi)[0]), check.task)[0] == want) for xi, want in items]
            return float(np.mean(hits)), hits

        return nncf.quantize_with_accuracy_control(
            self.model, self.calibration, nncf.Dataset([(check.x[i:i + 1], wanted[i]) for i in range(len(check.x))]),
            validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=self.subset,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=iterations, num_ranking_workers=1))


def _check(check: InStageCheck, vdir: Path) -> dict[str, Any]:
    try:
        return check.check(vdir)
    except KfoptError as exc:
        return {"passed": False, "reason": str(exc)}


def write_int8(model, parent: variant.VariantMeta, name: str, out_dir: Path, samples: np.ndarray,
               check: InStageCheck, cfg: Config) -> variant.VariantMeta:
    """nncf.quantize; if it misses the in-stage check, quantize_with_accuracy_control; keep the better."""
    maker = Int8(model, parent, samples, check)
    staging = out_dir.parent / f".{out_dir.name}.attempts"
    params = {"tool": "nncf", "nncf_version": maker.nncf.__version__, "calibration_samples": len(samples),
              "calibration_batch": 1, "preset": "performance (default)"}
    attempts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    left_pp = check.budget_left_pp
    full: set[str] | None = None  # the quantizers of the first attempt: all NNCF places
    try:
        for method in ("nncf.quantize", "nncf.quantize_with_accuracy_control"):
            target: dict[str, Any] = {}
            if attempts:
                if attempts[0]["passed"] or not cfg.fallback_max_attempts:
                    break
                metric, max_drop = fallback_target(attempts[0], left_pp, cfg.min_agreement)
                target = {"metric": metric, "max_drop": round(max_drop, 6), "iterations": cfg.fallback_max_attempts}
                quantized = maker.with_accuracy_control(metric, max_drop, cfg.fallback_max_attempts)
            else:
                quantized = maker.quantize()
            vdir = staging / str(len(attempts))
            meta = child_meta(parent, name, technique=technique(parent, TECHNIQUE), precision="int8", target="cpu",
                              params={**params, "method": method})
            ov_fmt.write_variant(ov_fmt.with_batch(quantized, None, parent.input.shape[1:]), vdir, meta)
            quantizers = _fake_quantizers(quantized)
            full = quantizers if full is None else full
            result = _check(check, vdir)
            results.append(result)
            figures = {k: result[k] for k in ("accuracy_delta_pp", "agreement", "max_abs_error") if k in result}
            attempts.append({"method": method, **target, "passed": result["passed"], "reason": result["reason"],
                             **figures, "fake_quantize_ops": len(quantizers),
                             "float_layers": sorted(full - quantizers)})
        best = max(range(len(attempts)), key=lambda i: (attempts[i]["passed"],
                                                        attempts[i].get("accuracy_delta_pp", -1e9),
                                                        attempts[i].get("agreement", 0.0)))
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(str(staging / str(best)), str(out_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = variant.read(out_dir)
    meta.extra[IN_STAGE] = results[best]
    meta.extra["fallback"] = {
        "checked_on": check.describe(), "budget_left_pp": round(left_pp, 4), "passed": attempts[best]["passed"],
        "attempts": attempts, "chosen_attempt": best, "float_layers": attempts[best]["float_layers"]}
    return variant.write(out_dir, meta)


def convert_parent(pdir: Path, parent: variant.VariantMeta, tmp: Path, samples: np.ndarray, ref: Reference,
                   cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Both variants of one ONNX parent, each checked and verified at every batch size."""
    named = names(parent)
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    model = ov_fmt.convert(Path(pdir) / onnx_fmt.FILENAME)
    fp32_dir = tmp / named["fp32"]
    ov_fmt.write_variant(model, fp32_dir, child_meta(
        parent, named["fp32"], technique=technique(parent, TECHNIQUE), precision="fp32", target="cpu",
        params={"converter": "openvino.convert_model", "compress_to_fp16": False}))
    fp32 = variant.read(fp32_dir)
    check = ref.in_stage.after(pdir)  # the budget the ONNX parent left, for both of its children
    fp32.extra[IN_STAGE] = _check(check, fp32_dir)
    variant.write(fp32_dir, fp32)
    metrics[f"{named['fp32']}_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    try:
        write_int8(model, parent, named["int8"], tmp / named["int8"], samples, check, cfg)
    except KfoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - NNCF refusing a model leaves the fp32 variant and a reason
        reason = f"nncf could not quantize {parent.name!r}: {ov_fmt.first_line(exc)}"
        variant.write_failed(tmp / named["int8"], named["int8"], "openvino", "cpu", reason,
                             technique=technique(parent, TECHNIQUE), parent=parent.name, precision="int8")
    metrics[f"{named['int8']}_seconds"] = round(time.perf_counter() - start, 2)
    for kind in KINDS:
        vdir = tmp / named[kind]
        if variant.read(vdir, verify=False).status != "ok":
            continue
        verified = verify_batches(vdir, ref, cfg)
        metrics[f"{named[kind]}_failing_batches"] = len(verified["failing"])
        log(f"  {named[kind]}: verified at batch {', '.join(verified['batches'])}: "
            + "; ".join(f"{b}: {r['reason']}" for b, r in verified["batches"].items()))
    return metrics


def parents(roots: list[Path]) -> tuple[list[tuple[Path, variant.VariantMeta]], list[str]]:
    """ONNX fp32 variants under `roots` (export's own first), and what was passed over, for the reason."""
    found, others = [], []
    for root in roots:
        for vdir in variant.discover(Path(root)):
            meta = variant.read(vdir, verify=False)
            if accepts(meta):
                found.append((vdir, meta))
            elif meta.format == "onnx" and meta.status != "ok":  # an ONNX variant a stage did not make
                others.append(f"{meta.name}: {meta.status}: {meta.reason}")
    found.sort(key=lambda pair: (pair[1].name != EXPORT_ONNX, pair[1].name))
    return found, others


def run(dataset_dir: Path, baseline_dir: Path, exports_dir: Path | list[Path], out_dir: Path, *, enabled: bool = True,
        calibration_samples: int = 200, batch_sizes: list[int] | None = None, accuracy_budget: float = 0.5,
        min_agreement: float = 0.97, fallback_max_attempts: int = 3, threads: int | tuple[int, ...] = (1,),
        confidence: float = 0.95,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the OpenVINO variants of every ONNX fp32 variant under `exports_dir` into `out_dir`."""
    cfg = Config(enabled, calibration_samples, tuple(batch_sizes or (1, 64)), accuracy_budget, min_agreement,
                 fallback_max_attempts, thread_counts(threads)[0], confidence)
    roots = list(exports_dir) if isinstance(exports_dir, (list, tuple)) else [exports_dir]
    baseline = variant.read(baseline_dir)
    with variant.staged_dir(Path(out_dir)) as tmp:
        found, passed_over = parents(roots) if cfg.enabled else ([], [])
        if not found:
            reason = SWITCHED_OFF + " (openvino.enabled)" if not cfg.enabled else (
                "no ONNX fp32 variant to convert" + (f" ({'; '.join(passed_over)})" if passed_over else ""))
            for kind in KINDS:
                variant.write_skipped(tmp / f"openvino_{kind}", f"openvino_{kind}", "openvino", "cpu", reason,
                                      technique=TECHNIQUE, parent=EXPORT_ONNX, precision=kind)
            return {"variants": 0}
        for vdir, _ in found:
            variant.read(vdir)  # checksums, before anything is converted
        ds = ds_mod.read(dataset_dir)
        if ds.schema.task != baseline.task:
            raise ConfigError(f"The dataset's task is {ds.schema.task!r} but the baseline's is {baseline.task!r}; "
                              "give the dataset the baseline was trained on.")
        ref = Reference.of(baseline_dir, ds, cfg)
        samples = calibration_set(ds, cfg.calibration_samples)
        metrics: dict[str, Any] = {"calibration_samples": len(samples)}
        with ov_fmt.no_telemetry():
            for vdir, meta in found:
                metrics.update(convert_parent(vdir, meta, tmp, samples, ref, cfg, log))
        metrics["variants"] = len(variant.discover(tmp))
    return metrics
