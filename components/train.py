"""train: fit the configured tf-keras model (or take the user's trained model) → baseline variant."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def train(dataset: Input[Dataset], architecture: str, model_uri: str, epochs: int, batch_size: int,
          learning_rate: float, patience: int, mixed_precision: str, seed: int, code_version: str,
          baseline: Output[Model], metrics: Output[Metrics], curves: Output[HTML]):
    from kfopt.models import train as stage
    from kfopt.stage import guard, log_metrics

    with guard("train"):
        result = stage.run(dataset.path, baseline.path, architecture=architecture, model_uri=model_uri,
                           epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
                           mixed_precision=mixed_precision, seed=seed)
        history = result.pop("history", {})
        baseline.metadata.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
        log_metrics(metrics, result)
        with open(curves.path, "w") as handle:
            handle.write(stage.curves_html(history))
