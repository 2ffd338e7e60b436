"""quantize: the baseline as TFLite dynamic/float16/int8, ORT static int8 QDQ (+ TensorRT form), QAT int8."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def quantize(dataset: Input[Dataset], baseline: Input[Model], enabled: bool, calibration_samples: int, qat: bool,
             qat_epochs: int, accuracy_budget: float, min_agreement: float, fallback_max_attempts: int, opset: int,
             code_version: str, variants: Output[Model], metrics: Output[Metrics]):
    from kfopt.optimize import quantize as stage
    from kfopt.stage import guard, log_metrics

    with guard("quantize"):
        log_metrics(metrics, stage.run(baseline.path, dataset.path, variants.path, enabled=enabled,
                                       calibration_samples=calibration_samples, qat=qat, qat_epochs=qat_epochs,
                                       accuracy_budget=accuracy_budget, min_agreement=min_agreement,
                                       fallback_max_attempts=fallback_max_attempts, opset=opset))
