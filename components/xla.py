"""xla: the baseline as fixed-batch XLA programs (SavedModel + StableHLO/HLO), verified through XLA (TPU pool)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def xla(dataset: Input[Dataset], baseline: Input[Model], enabled: bool, batch_sizes: list, code_version: str,
        variants: Output[Model], metrics: Output[Metrics]):
    from kfopt.accelerate import xla_stage as stage
    from kfopt.stage import guard, log_metrics

    with guard("xla"):
        log_metrics(metrics, stage.run(dataset.path, baseline.path, variants.path, enabled=enabled,
                                       batch_sizes=[int(b) for b in batch_sizes]))
