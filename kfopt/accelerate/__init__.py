"""Accelerator stages: TensorRT engines for GPUs and XLA programs for TPUs (and the CPU).

Each module holds one stage (`run(...) -> metrics`); format specifics (building, loading, running)
live in kfopt.formats.tensorrt and kfopt.formats.xla.
"""
