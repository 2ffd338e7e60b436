"""export: the baseline as float32 TFLite and ONNX variants."""

from kfp.dsl import Input, Metrics, Model, Output


def export(baseline: Input[Model], tflite: bool, onnx: bool, opset: int, code_version: str,
           variants: Output[Model], metrics: Output[Metrics]):
    from kfopt import export as stage
    from kfopt.stage import guard, log_metrics

    with guard("export"):
        log_metrics(metrics, stage.run(baseline.path, variants.path, tflite=tflite, onnx=onnx, opset=opset))
