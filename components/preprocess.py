"""preprocess: load (bundled set or URI), validate, stratified split, normalize → Dataset artifact.

`normalize` is auto | standardize | none; auto means none when `model_uri` names a brought model.
"""

from kfp.dsl import Dataset, Metrics, Output


def preprocess(data_uri: str, label_column: str, val_fraction: float, test_fraction: float, split_seed: int,
               sample_limit: int, normalize: str, model_uri: str, code_version: str, dataset: Output[Dataset],
               metrics: Output[Metrics]):
    from kfopt.data import preprocess as stage
    from kfopt.stage import guard, log_metrics

    with guard("preprocess"):
        result = stage.run(data_uri, dataset.path, label_column=label_column, val_fraction=val_fraction,
                           test_fraction=test_fraction, seed=split_seed, limit=sample_limit, normalize=normalize,
                           model_uri=model_uri)
        dataset.metadata.update(result)
        log_metrics(metrics, result)
