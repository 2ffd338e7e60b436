"""prune: tfmot magnitude pruning to each target sparsity (fp32 SavedModel) and its int8 TFLite."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def prune(dataset: Input[Dataset], baseline: Input[Model], enabled: bool, sparsities: list, epochs: int,
          calibration_samples: int, accuracy_budget: float, min_agreement: float, fallback_max_attempts: int,
          code_version: str, variants: Output[Model], metrics: Output[Metrics]):
    from kfopt.optimize import prune as stage
    from kfopt.stage import guard, log_metrics

    with guard("prune"):
        log_metrics(metrics, stage.run(baseline.path, dataset.path, variants.path, enabled=enabled,
                                       sparsities=[float(s) for s in sparsities], epochs=epochs,
                                       calibration_samples=calibration_samples, accuracy_budget=accuracy_budget,
                                       min_agreement=min_agreement, fallback_max_attempts=fallback_max_attempts))
