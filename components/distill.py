"""distill: a smaller student trained from the baseline (teacher) (fp32 SavedModel) and its int8 TFLite."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def distill(dataset: Input[Dataset], baseline: Input[Model], enabled: bool, student_width: float, temperature: float,
            alpha: float, epochs: int, calibration_samples: int, accuracy_budget: float, min_agreement: float,
            fallback_max_attempts: int, code_version: str, variants: Output[Model], metrics: Output[Metrics]):
    from kfopt.optimize import distill as stage
    from kfopt.stage import guard, log_metrics

    with guard("distill"):
        log_metrics(metrics, stage.run(baseline.path, dataset.path, variants.path, enabled=enabled,
                                       student_width=student_width, temperature=temperature, alpha=alpha,
                                       epochs=epochs, calibration_samples=calibration_samples,
                                       accuracy_budget=accuracy_budget, min_agreement=min_agreement,
                                       fallback_max_attempts=fallback_max_attempts))
