"""report: leaderboard, choice per target, Pareto front → JSON/Markdown/HTML and KFP UI artifacts."""

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def report(dataset: Input[Dataset], bench_cpu: Input[Model], name: str, targets: list, objectives: dict,
           code_version: str, report_dir: Output[Model], metrics: Output[Metrics], markdown: Output[Markdown],
           html: Output[HTML], confusion: Output[ClassificationMetrics], bench_gpu: Input[Model] = None,
           bench_tpu: Input[Model] = None):
    import shutil

    from kfopt import report as stage
    from kfopt.stage import guard, log_metrics

    with guard("report"):
        dirs = [b.path for b in (bench_cpu, bench_gpu, bench_tpu) if b is not None]
        result = stage.run(dirs, report_dir.path, name=name, targets=list(targets), objectives=dict(objectives),
                           dataset_dir=dataset.path)
        log_metrics(metrics, stage.kfp_metrics(result))
        shutil.copy(f"{report_dir.path}/report.md", markdown.path)
        shutil.copy(f"{report_dir.path}/report.html", html.path)
        if result.get("confusion"):
            confusion.log_confusion_matrix(result["confusion"]["labels"], result["confusion"]["matrix"])
