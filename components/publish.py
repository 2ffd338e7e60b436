"""publish: the run's models into the model registry; each target's choice only if it passes the regression gate.

Outputs the blessings folder (blessings/<target>.json + publish.json) that later steps read, and the
gate decisions as a Markdown artifact. Takes the same variant sets as the benchmark, to find the files.
An empty registry parameter means gs://<bucket of the pipeline root>/registry.
"""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def publish(report_dir: Input[Model], dataset: Input[Dataset], baseline: Input[Model], exports: Input[Model],
            enabled: bool, registry: str, model_name: str, accuracy_tolerance_pp: float, latency_tolerance: float,
            code_version: str, blessings: Output[Artifact], markdown: Output[Markdown], metrics: Output[Metrics],
            quantized: Input[Model] = None, pruned: Input[Model] = None, distilled: Input[Model] = None,
            tensorrt: Input[Model] = None, xla: Input[Model] = None):
    import shutil

    from kfopt import publish as stage
    from kfopt.stage import guard, log_metrics

    with guard("publish"):
        sets = [a.path for a in (baseline, exports, quantized, pruned, distilled, tensorrt, xla) if a is not None]
        registry = registry or stage.default_registry(blessings.uri)
        result = stage.run(report_dir.path, sets, registry, model_name, blessings.path,
                           accuracy_tolerance_pp=accuracy_tolerance_pp, latency_tolerance=latency_tolerance,
                           dataset_dir=dataset.path, enabled=enabled)
        shutil.copy(f"{blessings.path}/publish.md", markdown.path)
        log_metrics(metrics, {f"{t}.blessed": b["blessed"] for t, b in result["targets"].items()}
                    | {"version": result["version"] or 0})
        blessings.metadata.update({t: b["decision"] for t, b in result["targets"].items()})
