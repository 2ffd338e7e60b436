"""openvino: the ONNX fp32 variants as OpenVINO IR, fp32 and NNCF int8, verified at every benchmarked batch size."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def openvino(dataset: Input[Dataset], baseline: Input[Model], exports: Input[Model], enabled: bool,
             calibration_samples: int, batch_sizes: list, accuracy_budget: float, min_agreement: float,
             fallback_max_attempts: int, threads: int, code_version: str, variants: Output[Model],
             metrics: Output[Metrics]):
    from kfopt.passes import openvino as stage
    from kfopt.stage import log_metrics, optional_stage

    with optional_stage("openvino", variants.path, metrics):
        log_metrics(metrics, stage.run(dataset.path, baseline.path, exports.path, variants.path, enabled=enabled,
                                       calibration_samples=calibration_samples,
                                       batch_sizes=[int(b) for b in batch_sizes], accuracy_budget=accuracy_budget,
                                       min_agreement=min_agreement, fallback_max_attempts=fallback_max_attempts,
                                       threads=threads))
