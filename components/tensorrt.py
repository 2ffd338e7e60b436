"""tensorrt: strongly typed FP16/INT8 TensorRT engines from the ONNX variants (GPU pool).

Without a CUDA device the variants are skipped with the reason (and, with tensorrt_rtx installed, a
parse/build proof kept in them); the benchmark and report show that row as it is.
"""

from kfp.dsl import Input, Metrics, Model, Output


def tensorrt(exports: Input[Model], enabled: bool, min_batch: int, opt_batch: int, max_batch: int,
             workspace_mb: int, fp16: bool, int8: bool, code_version: str, variants: Output[Model],
             metrics: Output[Metrics], quantized: Input[Model] = None):
    from kfopt.accelerate import tensorrt_stage as stage
    from kfopt.stage import guard, log_metrics

    with guard("tensorrt"):
        log_metrics(metrics, stage.run(exports.path, variants.path, quantized_dir=quantized.path if quantized else None,
                                       enabled=enabled, min_batch=min_batch, opt_batch=opt_batch,
                                       max_batch=max_batch, workspace_mb=workspace_mb, fp16=fp16, int8=int8))
