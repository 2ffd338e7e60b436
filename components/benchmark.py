"""benchmark: every variant this node pool can run, through the runner registry, each in its own process.

One task per node pool (cpu, gpu, tpu), so every figure is measured on the hardware it claims.
Variant sets from stages that are switched off arrive as folders of skipped variants.
"""

from kfp.dsl import Dataset, Input, Model, Output


def benchmark(dataset: Input[Dataset], baseline: Input[Model], exports: Input[Model], hardware: str,
              batch_sizes: list, threads: int, max_seconds: float, accuracy_budget: float, min_agreement: float,
              code_version: str, results: Output[Model], quantized: Input[Model] = None,
              pruned: Input[Model] = None, distilled: Input[Model] = None, tensorrt: Input[Model] = None,
              xla: Input[Model] = None):
    from kfopt import bench
    from kfopt.stage import guard

    with guard(f"benchmark_{hardware}"):
        sets = [a.path for a in (baseline, exports, quantized, pruned, distilled, tensorrt, xla) if a is not None]
        summary = bench.run(sets, dataset.path, results.path, baseline_dir=baseline.path,
                            batch_sizes=[int(b) for b in batch_sizes], threads=threads, max_seconds=max_seconds,
                            accuracy_budget=accuracy_budget, min_agreement=min_agreement, hardware=hardware)
        results.metadata["variants"] = len(summary["results"])
