"""THE STAGE TABLE: every pipeline stage in one row — what it runs, which settings it takes, what it reads
and writes, whether it may fail alone.

The table drives everything that used to be written by hand per stage:

- the KFP components (components/: each component's typed signature and its one-line body are made
  from the row, see `execute` below),
- the pipeline DAG and the wiring of every task (pipelines/kfopt_pipeline.py),
- the deployment file's stage list (kfopt/deployment.py),
- which variant sets the benchmark and the publish stage read (every row with `variants=<set name>`).

A setting is written once, as a field of the run configuration (kfopt/config.py: type, default,
pipeline-parameter name and description in one place) and named here in the row of the stage that
uses it (`knobs`: the stage function's keyword → the config path). `tests/test_stage_table.py` checks
that every config field reaches the `run()` that uses it and that `run()`'s defaults agree with the config.

Adding a stage or a format is a module with a `run()` plus one row here. This module imports neither
kfp nor TensorFlow: the stage functions are named by import path and loaded only inside the task.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Any, Callable

from kfopt import config as cfg_mod

#: Keyword of the stage functions that receives the stage's main output folder.
OUT = "out_dir"
BENCH_HARDWARE = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row. `inputs` maps a keyword of `run` to the upstream artifact `"<stage>.<output>"`;
    `outputs` maps an output artifact name to its KFP type (the first is the main one, handed to `run` as
    `out_dir`); `variants` names the variant set the stage produces (read by benchmark and publish)."""

    name: str
    run: str  # "module:function", imported inside the task
    doc: str
    knobs: dict[str, str] = dataclasses.field(default_factory=dict)  # run() keyword → config path
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)  # run() keyword → "<stage>.<output>"
    optional_inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    outputs: dict[str, str] = dataclasses.field(default_factory=lambda: {"variants": "Model", "metrics": "Metrics"})
    variants: str = ""  # name of the variant set this stage writes ("" = none)
    fan_in: str = ""  # run() keyword that receives every variant set as a list of folders
    sets: tuple[str, ...] = ()  # with fan_in: only the variant sets of these stages (empty: every set)
    copies: tuple[str, ...] = ()  # one task per entry (benchmark: per hardware), passed as `hardware`
    fails_alone: bool = False  # an unexpected error writes `failed` variants instead of stopping the run
    cache: bool = True
    pool: str = "cpu"  # placement when a deployment file does not name the task
    resources: str = "medium"

    def task_names(self) -> list[str]:
        return [f"{self.name}_{c}" for c in self.copies] or [self.name]

    def function(self) -> Callable:
        module, _, func = self.run.partition(":")
        return getattr(importlib.import_module(module), func)


_GATE = {"accuracy_budget": "verify.accuracy_budget", "min_agreement": "verify.min_agreement",
         "confidence": "verify.confidence",
         "fallback_max_attempts": "quantize.fallback_max_attempts"}
_DATA = {"dataset_dir": "augment.augmented"}
#: What the ORT int8 pass searches and times with, wherever it runs (quantize and the prune/distill chains).
_ORT = {"ort_search": "quantize.ort_search", "bench_threads": "bench.threads", "bench_batch_sizes": "bench.batch_sizes"}
_BASELINE = {"baseline_dir": "train.baseline"}

STAGES: tuple[Stage, ...] = (
    Stage("preprocess", "kfopt.data.preprocess:run",
          "load (bundled set or URI), validate, stratified split, normalize → Dataset artifact.",
          knobs={"source": "data.source", "label_column": "data.label_column", "val_fraction": "data.val_fraction",
                 "test_fraction": "data.test_fraction", "seed": "data.seed", "limit": "data.limit",
                 "min_samples": "data.min_samples", "normalize": "data.normalize", "model_uri": "model.uri"},
          outputs={"dataset": "Dataset", "metrics": "Metrics"}),
    Stage("augment", "kfopt.data.augment:run",
          "more training samples (images: shifts, rotations, noise; tabular: noise), seeded.",
          knobs={"enabled": "augment.enabled", "factor": "augment.factor", "seed": "augment.seed",
                 "max_shift": "augment.max_shift", "max_rotation": "augment.max_rotation",
                 "noise_std": "augment.noise_std"},
          inputs={"dataset_dir": "preprocess.dataset"}, outputs={"augmented": "Dataset"}),
    Stage("train", "kfopt.models.train:run",
          "fit the configured model (or take the user's trained model) → baseline variant.",
          knobs={"architecture": "model.architecture", "framework": "model.framework", "model_uri": "model.uri",
                 "epochs": "train.epochs",
                 "batch_size": "train.batch_size", "learning_rate": "train.learning_rate",
                 "patience": "train.patience", "mixed_precision": "train.mixed_precision", "seed": "train.seed",
                 "workers": "train.workers", "engine": "train.engine", "namespace": "train.namespace",
                 "timeout_s": "train.timeout_s", "deployment": "deploy.deployment"},
          inputs=_DATA, outputs={"baseline": "Model", "metrics": "Metrics", "curves": "HTML"}),
    Stage("export", "kfopt.export:run", "the baseline as float32 TFLite and ONNX variants.",
          knobs={"tflite": "export.tflite", "onnx": "export.onnx", "opset": "export.opset"},
          inputs=_BASELINE, variants="exports", fails_alone=True),
    Stage("quantize", "kfopt.optimize.quantize:run",
          "TFLite dynamic/float16/int8, ORT static int8 QDQ (+ TensorRT form), QAT int8.",
          knobs={"enabled": "quantize.enabled", "calibration_samples": "quantize.calibration_samples",
                 "qat": "quantize.qat", "qat_epochs": "quantize.qat_epochs", "opset": "export.opset",
                 "search_time_budget_s": "search.time_budget_s", **_GATE, **_ORT},
          inputs={**_BASELINE, **_DATA}, variants="quantized", fails_alone=True),
    Stage("prune", "kfopt.optimize.prune:run",
          "magnitude pruning searched over sparsity, the kept one (fp32), its int8 TFLite, its ONNX + ORT int8.",
          knobs={"enabled": "prune.enabled", "sparsities": "prune.sparsities", "epochs": "prune.epochs",
                 "calibration_samples": "quantize.calibration_samples", "opset": "export.opset",
                 "search_time_budget_s": "search.time_budget_s", **_GATE, **_ORT},
          inputs={**_BASELINE, **_DATA}, variants="pruned", fails_alone=True),
    Stage("distill", "kfopt.optimize.distill:run",
          "the narrowest student (width searched) trained from the baseline (fp32), its int8 TFLite, its ONNX + "
          "ORT int8.",
          knobs={"enabled": "distill.enabled", "student_width": "distill.student_width",
                 "temperature": "distill.temperature", "alpha": "distill.alpha", "epochs": "distill.epochs",
                 "patience": "distill.patience", "calibration_samples": "quantize.calibration_samples",
                 "opset": "export.opset", "search_time_budget_s": "search.time_budget_s", **_GATE, **_ORT},
          inputs={**_BASELINE, **_DATA}, variants="distilled", fails_alone=True),
    Stage("tensorrt", "kfopt.accelerate.tensorrt_stage:run",
          "strongly typed FP16/INT8 TensorRT engines from the ONNX variants (GPU pool).",
          knobs={"enabled": "tensorrt.enabled", "min_batch": "tensorrt.min_batch", "opt_batch": "tensorrt.opt_batch",
                 "max_batch": "tensorrt.max_batch", "workspace_mb": "tensorrt.workspace_mb",
                 "fp16": "tensorrt.fp16", "int8": "tensorrt.int8"},
          inputs={"exports_dir": "export.variants"}, optional_inputs={"quantized_dir": "quantize.variants"},
          variants="tensorrt", fails_alone=True),
    Stage("xla", "kfopt.accelerate.xla_stage:run",
          "the baseline as fixed-batch XLA programs (SavedModel + StableHLO/HLO), verified through XLA (TPU pool).",
          knobs={"enabled": "xla.enabled", "batch_sizes": "xla.batch_sizes"},
          inputs={**_DATA, **_BASELINE}, variants="xla", fails_alone=True),
    Stage("openvino", "kfopt.passes.openvino:run",
          "the ONNX fp32 variants as OpenVINO IR, fp32 and NNCF int8, verified at every benchmarked batch size.",
          knobs={"enabled": "openvino.enabled", "calibration_samples": "quantize.calibration_samples",
                 "batch_sizes": "bench.batch_sizes", "threads": "bench.threads", **_GATE},
          inputs={**_DATA, **_BASELINE}, fan_in="exports_dir", sets=("export", "prune", "distill"),
          variants="openvino", fails_alone=True),
    Stage("benchmark", "kfopt.bench:run",
          "every variant this node pool can run, through the runner registry, each in its own process.",
          knobs={"batch_sizes": "bench.batch_sizes", "threads": "bench.threads", "warmup": "bench.warmup",
                 "min_runs": "bench.min_runs", "max_seconds": "bench.max_seconds", "target_ci": "bench.target_ci",
                 "accuracy_budget": "verify.accuracy_budget", "min_agreement": "verify.min_agreement",
                 "confidence": "verify.confidence", "targets": "select.targets", "objectives": "select.objectives",
                 "deployment": "deploy.deployment", "finalists": "bench.finalists",
                 "saturation_gain": "bench.saturation_gain", "saturation_steps": "bench.saturation_steps"},
          inputs={**_DATA, **_BASELINE}, outputs={"results": "Model"}, fan_in="variant_roots",
          copies=BENCH_HARDWARE),
    Stage("report", "kfopt.report:run",
          "leaderboard, choice per target, Pareto front → JSON/Markdown/HTML and KFP UI artifacts.",
          knobs={"name": "publish.model_name", "targets": "select.targets", "objectives": "select.objectives"},
          inputs={"dataset_dir": "augment.augmented", "bench_dirs": "benchmark.results"},
          outputs={"report_dir": "Model", "metrics": "Metrics", "markdown": "Markdown", "html": "HTML",
                   "confusion": "ClassificationMetrics"}),
    # Never cached: a cached publish would report a promotion without writing to the registry.
    Stage("publish", "kfopt.publish:run",
          "the run's models into the model registry; each target's choice only if it passes the regression gate.",
          knobs={"enabled": "publish.enabled", "registry_uri": "publish.registry", "name": "publish.model_name",
                 "accuracy_tolerance_pp": "publish.accuracy_tolerance_pp",
                 "latency_tolerance": "publish.latency_tolerance"},
          inputs={"report_dir": "report.report_dir", "dataset_dir": "augment.augmented"},
          outputs={"blessings": "Artifact", "markdown": "Markdown", "metrics": "Metrics"},
          fan_in="variant_roots", cache=False),
    # Never cached: it talks to the cluster, whose state a cached result would not see.
    Stage("deploy", "kfopt.deploy:run",
          "each promoted target's model as a KServe InferenceService on its node pool (off by default).",
          knobs={"enabled": "deploy.enabled", "apply_manifests": "deploy.apply", "namespace": "deploy.namespace",
                 "canary_percent": "deploy.canary_percent", "timeout_s": "deploy.timeout_s", "mode": "deploy.mode",
                 "deployment": "deploy.deployment", "triton_version": "deploy.triton_version",
                 "triton_tensorrt": "deploy.triton_tensorrt"},
          inputs={"publish_dir": "publish.blessings"}, outputs={"deployed": "Artifact", "metrics": "Metrics"},
          cache=False, resources="small"),
)

BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    return BY_NAME[name]


def default_placement(task: str) -> dict[str, str]:
    """Where `task` runs when a deployment file does not place it: its row's pool and resource profile."""
    stage = next(s for s in STAGES if task in s.task_names())
    return {"pool": stage.pool, "resources": stage.resources}


def task_names() -> tuple[str, ...]:
    """Every task of the pipeline, in DAG order: what a deployment file places."""
    return tuple(t for s in STAGES for t in s.task_names())


def fan_in_sets(stage: Stage) -> list[tuple[str, str]]:
    """(component input, upstream artifact) of every variant set a fan-in stage reads that is not
    already one of its inputs (the benchmark's baseline_dir is also the baseline set)."""
    if not stage.fan_in:
        return []
    taken = set(stage.inputs.values())
    sources = [("baseline", "train.baseline")] + [(s.variants, f"{s.name}.variants") for s in STAGES if s.variants]
    if stage.sets:
        sources = [(name, source) for name, source in sources if source.partition(".")[0] in stage.sets]
    return [(name, source) for name, source in sources if source not in taken]


def input_names(key: str, source: str) -> list[str]:
    """The component inputs behind one run() keyword: one per copy of the upstream stage (bench_dirs_cpu…)."""
    copies = get(source.partition(".")[0]).copies
    return [f"{key}_{c}" for c in copies] if copies else [key]


def config_type(path: str) -> Any:
    """The Python type of the config field at `path` (e.g. list[int])."""
    node: Any = cfg_mod.RunConfig
    for part in path.split("."):
        node = typing.get_type_hints(node)[part]
    return node


def coerce(value: Any, tp: Any) -> Any:
    """A parameter value as KFP hands it to a task (JSON: 64 may be 64.0) → the config's type."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [coerce(v, item) for v in value]
    if origin is dict:
        return dict(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def execute(name: str, arguments: dict[str, Any], copy: str = "") -> dict[str, Any]:
    """The body of every kfopt component: call the stage function of row `name` with the task's arguments.

    `arguments` is the component's `locals()`: parameters by run() keyword, KFP artifacts (objects with
    `.path`, `.uri`, `.metadata`) by input/output name; `copy` is the hardware of a benchmark task.
    Returns the stage's metrics.
    """
    from kfopt import stage_outputs
    from kfopt.stage import guard, optional_stage

    stage = get(name)
    task = f"{name}_{copy}" if copy else name
    kwargs = {key: coerce(arguments[key], config_type(path)) for key, path in stage.knobs.items()}
    for key, source in stage.inputs.items():
        names = input_names(key, source)
        if len(names) > 1:  # one input per copy of the upstream stage, handed over as a list
            kwargs[key] = [arguments[n].path for n in names if arguments.get(n) is not None]
        else:
            kwargs[key] = arguments[key].path
    for key in stage.optional_inputs:
        kwargs[key] = arguments[key].path if arguments.get(key) is not None else None
    if stage.fan_in:
        shared = [kwargs[key] for key, source in stage.inputs.items()
                  if source == "train.baseline" and (not stage.sets or "train" in stage.sets)]
        sets = [arguments[n].path for n, _ in fan_in_sets(stage) if arguments.get(n) is not None]
        kwargs[stage.fan_in] = shared + sets
    if copy:
        kwargs["hardware"] = copy
    main = next(iter(stage.outputs))
    kwargs[OUT] = arguments[main].path
    stage_outputs.before(name, kwargs, arguments)
    wrap = optional_stage(task, kwargs[OUT], arguments.get("metrics")) if stage.fails_alone else guard(task)
    with wrap:
        result = stage.function()(**kwargs) or {}
        stage_outputs.after(name, main, result, arguments)
        return result
    return {}
