"""Techniques as passes over variants.

A pass turns one variant into another. Each module here declares

    NAME                     the pass, as a chain names it
    FORMAT, PRECISION, TARGET, TECHNIQUE   what it makes (also for the skipped variant when it cannot)
    Config                   a frozen dataclass: every setting with its default, the config path it comes
                             from and its description (`knob`), checked in __post_init__
    refusal(meta) -> str | None   why it cannot take this variant, read from kfopt.json (format, precision,
                             source framework and its capabilities), never from the variant's name;
                             `accepts(meta)` is `refusal(meta) is None`
    name_for(parent) -> str  the name of the variant it makes from `parent`
    run(parent_dir, out_dir, ctx, cfg) -> VariantMeta   the one method that does the work

Stages compose passes; a stage that makes fp32 models (prune, distill) declares which passes follow
on its outputs as a CHAIN, run by `follow`, instead of importing another stage's code. Every pass
checks what it made against the *baseline* on the validation split with what is left of the
accuracy budget after its parent's own loss (kfopt.passes.check), so losses cannot stack along a
chain. kfopt.passes.openvino is a stage-level pass over every ONNX fp32 variant of a run.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from kfopt import frameworks, variant
from kfopt.data import dataset as ds_mod
from kfopt.passes.check import InStageCheck
from kfopt.stats import CONFIDENCE

#: name → module of every pass a stage or a chain can name.
PASSES = {"tflite_int8": "kfopt.passes.tflite_int8", "ort_int8": "kfopt.passes.ort_int8",
          "ort_int8_trt": "kfopt.passes.ort_int8_trt", "qat": "kfopt.passes.qat",
          "onnx_export": "kfopt.passes.onnx_export", "pt2e_int8": "kfopt.passes.pt2e_int8",
          "torch_compile": "kfopt.passes.torch_compile", "pt2e_qat": "kfopt.passes.pt2e_qat"}
#: Fine-tuning batch size (pruning, QAT, distillation); the runs are short, so this is not tuned.
FINE_TUNE_BATCH = 32
BASELINE = "baseline"
_NEEDS = {"prune": "pruning", "distill": "distillation", "qat": "quantization-aware training",
          "tflite": "direct TFLite conversion", "fine_tune": "fine-tuning"}


def knob(default: Any, config: str, help: str) -> Any:
    """A Config field with the config path it comes from and its description."""
    return dataclasses.field(default=default, metadata={"config": config, "help": help})


@dataclasses.dataclass
class Context:
    """What the passes of one stage share: the data, the calibration samples, the in-stage check, scratch space."""

    ds: ds_mod.Dataset
    samples: np.ndarray
    check: InStageCheck
    workdir: Path
    search_budget_s: float = 60.0  # search.time_budget_s: what each of this stage's searches may spend

    @classmethod
    def for_stage(cls, ds: ds_mod.Dataset, baseline_dir: Path, calibration_samples: int, accuracy_budget: float,
                  min_agreement: float, workdir: str | Path, search_budget_s: float = 60.0,
                  confidence: float = CONFIDENCE) -> "Context":
        """The context every optimizer stage builds: calibration samples and the check against the baseline."""
        from kfopt.passes.check import calibration_set

        check = InStageCheck.against_baseline(baseline_dir, ds, accuracy_budget, min_agreement, confidence)
        return cls(ds, calibration_set(ds, calibration_samples), check, Path(workdir), search_budget_s)

    def search(self, knob: str, objective: str, rule: str):
        """A search (kfopt.search) with the stage's time budget, on its own clock from now: a technique's knob
        (sparsity, width) and the int8 search of the variant it keeps each get the budget, so a long width
        search cannot starve the ORT search that follows it (each runs at least its first point)."""
        from kfopt.search import Search

        return Search(knob, objective, rule, self.search_budget_s)


def get(name: str) -> ModuleType:
    return importlib.import_module(PASSES[name])


def lacks(meta: variant.VariantMeta, capability: str) -> str | None:
    """Why a technique needing `capability` cannot run on `meta`'s model (from kfopt.json), or None."""
    if frameworks.has(meta, capability):
        return None
    return (f"{_NEEDS.get(capability, capability)} needs the model's Keras/torch code; "
            f"a{'n' if meta.framework[:1] in 'aeiou' else ''} {meta.framework or 'unknown-framework'} model has none")


def not_made(meta: variant.VariantMeta) -> str | None:
    """The reason a variant has no model to work on (skipped or failed), or None."""
    return None if meta.status == "ok" else f"its parent {meta.name} was {meta.status}: {meta.reason}"


def lineage(parent: variant.VariantMeta) -> str:
    """The prefix of a child's name: none for the baseline and its own exports, else the model it came from
    (a pruned model's ONNX export `pruned_50_onnx_fp32` gives `pruned_50_onnx_int8`)."""
    if parent.parent is None:
        return ""
    if _is_export(parent):
        return "" if parent.parent == BASELINE else f"{parent.parent}_"
    return f"{parent.name}_"


def _is_export(meta: variant.VariantMeta) -> bool:
    return meta.technique.rpartition("+")[2] == "export"


def technique(parent: variant.VariantMeta, own: str) -> str:
    """`quantize` on the baseline (or its own exports), `prune+quantize` on a pruned model."""
    if parent.parent is None or (_is_export(parent) and parent.parent == BASELINE):
        return own
    return f"{parent.technique}+{own}"


def skip(step: ModuleType, parent: variant.VariantMeta, out: Path, reason: str) -> variant.VariantMeta:
    """The variant `step` would have made from `parent`, skipped with the reason (format etc. from the pass)."""
    return variant.write_skipped(out, step.name_for(parent), step.FORMAT, step.TARGET, reason,
                                 technique=technique(parent, step.TECHNIQUE), parent=parent.name,
                                 precision=step.PRECISION, **getattr(step, "SKIPPED_EXTRA", {}))


def chained_names(chain: tuple[tuple[str, ...], ...], parent: variant.VariantMeta) -> list[tuple[str, str, str]]:
    """(name, format, target) of every variant `follow` would make from `parent`: for the skipped stand-ins
    a stage writes when it makes nothing."""
    out = []
    for sequence in chain:
        meta = parent
        for step in map(get, sequence):
            name = step.name_for(meta)
            out.append((name, step.FORMAT, step.TARGET))
            meta = dataclasses.replace(meta, name=name, parent=meta.name, technique=technique(meta, step.TECHNIQUE),
                                       format=step.FORMAT, precision=step.PRECISION)
    return out


def apply(step: ModuleType, parent_dir: Path, out_root: Path, ctx: Context, cfg: Any = None) -> variant.VariantMeta:
    """One pass on the variant at `parent_dir`, written under `out_root`; skipped with the reason if it refuses."""
    meta = variant.read(parent_dir, verify=False)
    out = Path(out_root) / step.name_for(meta)
    why = not_made(meta) or step.refusal(meta)
    if why:
        return skip(step, meta, out, why)
    return step.run(Path(parent_dir), out, ctx, cfg if cfg is not None else step.Config())


def follow(chain: tuple[tuple[str, ...], ...], parent_dir: Path, out_root: Path, ctx: Context,
           configs: dict[str, Any] | None = None) -> list[variant.VariantMeta]:
    """Run a declared chain on the variant at `parent_dir`; write every result under `out_root`.

    Each sequence of the chain starts from the parent; inside a sequence each pass takes the variant the
    previous one made. A pass that refuses its input writes a skipped variant with the reason, and so does
    every pass after it in that sequence. `configs` holds a Config per pass name (default: its defaults).
    """
    made = []
    for sequence in chain:
        source = Path(parent_dir)
        for name in sequence:
            step = get(name)
            made.append(apply(step, source, out_root, ctx, (configs or {}).get(name)))
            source = Path(out_root) / step.name_for(variant.read(source, verify=False))
    return made
