"""The kfopt DAG: reads like the stage list. Placement on node pools comes from the deployment.

    preprocess → augment → train → export ─┐
                                   (optimizers, accelerators)
                                           ├→ benchmark_cpu ─┐
                                           ├→ benchmark_gpu ─┼→ report → publish (registry, gate)
                                           └→ benchmark_tpu ─┘

`build(deployment)` returns the @dsl.pipeline function; `kfopt compile` compiles it and `kfopt run`
runs it with kfp.local. Every parameter is typed, has a default and a description (from
kfopt.config.PARAMS), so the Kubeflow UI shows a form a user can fill in.
"""



import hashlib
from pathlib import Path

from kfp import dsl

import kfopt
from components import augment, benchmark, distill, export, make, preprocess, prune, quantize, report, train
from components import publish as publish_component
from components import tensorrt as tensorrt_component
from components import xla as xla_component
from kfopt import config as cfg_mod
from kfopt import deployment as deploy_mod
from pipelines import placement

PIPELINE_NAME = "kfopt"
_DEFAULTS = cfg_mod.pipeline_params(cfg_mod.RunConfig())


def code_version() -> str:
    """kfopt's version plus a hash of its code: part of every task's cache key.

    KFP's cache key sees only a component's own source and inputs, not the library it calls.
    """
    digest = hashlib.sha256()
    root = Path(kfopt.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.read_bytes())
    return f"{kfopt.__version__}+{digest.hexdigest()[:12]}"


def _docstring() -> str:
    lines = ["Train, optimize, verify, benchmark and choose a model per deployment target.", "", "Args:"]
    lines += [f"    {name}: {desc}" for name, _, desc in cfg_mod.PARAMS]
    return "\n".join(lines)


def build(deployment: "deploy_mod.Deployment | None" = None):
    deployment = deployment or deploy_mod.load("cpu-only")
    version = code_version()

    def component(func, stage):
        return make(func, deployment.pool_for(stage).image)

    c_pre = component(preprocess.preprocess, "preprocess")
    c_aug = component(augment.augment, "augment")
    c_train = component(train.train, "train")
    c_export = component(export.export, "export")
    c_quantize = component(quantize.quantize, "quantize")
    c_prune = component(prune.prune, "prune")
    c_distill = component(distill.distill, "distill")
    c_tensorrt = component(tensorrt_component.tensorrt, "tensorrt")
    c_xla = component(xla_component.xla, "xla")
    c_bench = component(benchmark.benchmark, "benchmark_cpu")
    c_report = component(report.report, "report")
    c_publish = component(publish_component.publish, "publish")

    def place(task, stage):
        task.set_display_name(stage)
        return placement.apply(task, stage, deployment)

    d = _DEFAULTS

    def kfopt_pipeline(
        data_uri: str = d["data_uri"], label_column: str = d["label_column"],
        val_fraction: float = d["val_fraction"], test_fraction: float = d["test_fraction"],
        split_seed: int = d["split_seed"], sample_limit: int = d["sample_limit"], normalize: bool = d["normalize"],
        augment_enabled: bool = d["augment_enabled"], augment_factor: float = d["augment_factor"],
        augment_seed: int = d["augment_seed"], model_architecture: str = d["model_architecture"],
        model_uri: str = d["model_uri"], epochs: int = d["epochs"], batch_size: int = d["batch_size"],
        learning_rate: float = d["learning_rate"], patience: int = d["patience"],
        mixed_precision: str = d["mixed_precision"], train_seed: int = d["train_seed"],
        export_tflite: bool = d["export_tflite"], export_onnx: bool = d["export_onnx"],
        onnx_opset: int = d["onnx_opset"],
        quantize_enabled: bool = d["quantize_enabled"], calibration_samples: int = d["calibration_samples"],
        qat_enabled: bool = d["qat_enabled"], qat_epochs: int = d["qat_epochs"],
        fallback_max_attempts: int = d["fallback_max_attempts"], prune_enabled: bool = d["prune_enabled"],
        prune_sparsities: list = d["prune_sparsities"], prune_epochs: int = d["prune_epochs"],
        distill_enabled: bool = d["distill_enabled"], student_width: float = d["student_width"],
        distill_temperature: float = d["distill_temperature"], distill_alpha: float = d["distill_alpha"],
        distill_epochs: int = d["distill_epochs"],
        tensorrt_enabled: bool = d["tensorrt_enabled"], tensorrt_min_batch: int = d["tensorrt_min_batch"],
        tensorrt_opt_batch: int = d["tensorrt_opt_batch"], tensorrt_max_batch: int = d["tensorrt_max_batch"],
        tensorrt_workspace_mb: int = d["tensorrt_workspace_mb"], tensorrt_fp16: bool = d["tensorrt_fp16"],
        tensorrt_int8: bool = d["tensorrt_int8"], xla_enabled: bool = d["xla_enabled"],
        xla_batch_sizes: list = d["xla_batch_sizes"], accuracy_budget: float = d["accuracy_budget"],
        min_agreement: float = d["min_agreement"], bench_batch_sizes: list = d["bench_batch_sizes"],
        bench_threads: int = d["bench_threads"], bench_max_seconds: float = d["bench_max_seconds"],
        targets: list = d["targets"], objectives: dict = d["objectives"],
        publish_enabled: bool = d["publish_enabled"], registry: str = d["registry"], model_name: str = d["model_name"],
        accuracy_tolerance_pp: float = d["accuracy_tolerance_pp"], latency_tolerance: float = d["latency_tolerance"],
    ) -> dsl.Model:
        pre = place(c_pre(data_uri=data_uri, label_column=label_column, val_fraction=val_fraction,
                          test_fraction=test_fraction, split_seed=split_seed, sample_limit=sample_limit,
                          normalize=normalize, code_version=version), "preprocess")
        aug = place(c_aug(dataset=pre.outputs["dataset"], enabled=augment_enabled, factor=augment_factor,
                          seed=augment_seed, code_version=version), "augment")
        data = aug.outputs["augmented"]
        trained = place(c_train(dataset=data, architecture=model_architecture, model_uri=model_uri, epochs=epochs,
                                batch_size=batch_size, learning_rate=learning_rate, patience=patience,
                                mixed_precision=mixed_precision, seed=train_seed, code_version=version), "train")
        baseline = trained.outputs["baseline"]
        exported = place(c_export(baseline=baseline, tflite=export_tflite, onnx=export_onnx, opset=onnx_opset,
                                  code_version=version), "export")
        sets = {"exports": exported.outputs["variants"]}
        # Optimizers: each reads the baseline and writes one folder of variants (int8 chains included).
        gate = {"accuracy_budget": accuracy_budget, "min_agreement": min_agreement,
                "fallback_max_attempts": fallback_max_attempts, "code_version": version}
        quant = place(c_quantize(dataset=data, baseline=baseline, enabled=quantize_enabled,
                                 calibration_samples=calibration_samples, qat=qat_enabled, qat_epochs=qat_epochs,
                                 opset=onnx_opset, **gate), "quantize")
        pruned = place(c_prune(dataset=data, baseline=baseline, enabled=prune_enabled, sparsities=prune_sparsities,
                               epochs=prune_epochs, calibration_samples=calibration_samples, **gate), "prune")
        distilled = place(c_distill(dataset=data, baseline=baseline, enabled=distill_enabled,
                                    student_width=student_width, temperature=distill_temperature,
                                    alpha=distill_alpha, epochs=distill_epochs,
                                    calibration_samples=calibration_samples, **gate), "distill")
        sets.update(quantized=quant.outputs["variants"], pruned=pruned.outputs["variants"],
                    distilled=distilled.outputs["variants"])
        # Accelerators, after the optimizers: TensorRT also takes the quantize stage's tensorrt_ready variant.
        trt = place(c_tensorrt(exports=sets["exports"], enabled=tensorrt_enabled, min_batch=tensorrt_min_batch,
                               opt_batch=tensorrt_opt_batch, max_batch=tensorrt_max_batch,
                               workspace_mb=tensorrt_workspace_mb, fp16=tensorrt_fp16, int8=tensorrt_int8,
                               quantized=sets["quantized"], code_version=version), "tensorrt")
        xla = place(c_xla(dataset=data, baseline=baseline, enabled=xla_enabled, batch_sizes=xla_batch_sizes,
                          code_version=version), "xla")
        sets.update(tensorrt=trt.outputs["variants"], xla=xla.outputs["variants"])
        bench = {}
        for hardware in ("cpu", "gpu", "tpu"):
            bench[hardware] = place(c_bench(
                dataset=data, baseline=baseline, hardware=hardware, batch_sizes=bench_batch_sizes,
                threads=bench_threads, max_seconds=bench_max_seconds, accuracy_budget=accuracy_budget,
                min_agreement=min_agreement, code_version=version, **sets), f"benchmark_{hardware}")
        rep = place(c_report(dataset=data, bench_cpu=bench["cpu"].outputs["results"],
                             bench_gpu=bench["gpu"].outputs["results"], bench_tpu=bench["tpu"].outputs["results"],
                             name=model_name, targets=targets, objectives=objectives, code_version=version),
                    "report")
        # Never cached: a cached publish would report a promotion without writing to the registry.
        place(c_publish(report_dir=rep.outputs["report_dir"], dataset=data, enabled=publish_enabled, registry=registry,
                        model_name=model_name, accuracy_tolerance_pp=accuracy_tolerance_pp,
                        latency_tolerance=latency_tolerance, code_version=version, baseline=baseline, **sets),
              "publish").set_caching_options(False)
        return rep.outputs["report_dir"]

    kfopt_pipeline.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=_docstring().splitlines()[0])(kfopt_pipeline)
