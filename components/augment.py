"""augment: more training samples (images: shifts, rotations, noise; tabular: noise), seeded."""

from kfp.dsl import Dataset, Input, Output


def augment(dataset: Input[Dataset], enabled: bool, factor: float, seed: int, code_version: str,
            augmented: Output[Dataset]):
    from kfopt.data import augment as stage
    from kfopt.stage import guard

    with guard("augment"):
        augmented.metadata.update(stage.run(dataset.path, augmented.path, enabled=enabled, factor=factor, seed=seed))
