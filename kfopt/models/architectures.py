"""Model architectures by name. Builders import TensorFlow lazily; this table does not.

`width` scales filters and units, which is how distillation builds a smaller student of the
same family (width 0.5 = half the filters/units).
"""

from __future__ import annotations

from typing import Callable

from kfopt.errors import ConfigError


def scaled(n: int, width: float) -> int:
    """A layer's filters/units at `width` of the original, never below one."""
    return max(1, int(round(n * width)))


def digits_cnn(input_shape, num_classes: int, width: float = 1.0):
    """Conv2D-32 / MaxPool / Conv2D-64 / MaxPool / Dense-128 / Dense-10 (the seed's image model)."""
    from kfopt.tfenv import keras

    k = keras()
    return k.Sequential([
        k.layers.Input(shape=tuple(input_shape), name="input"),
        k.layers.Conv2D(scaled(32, width), 3, padding="same", activation="relu"),
        k.layers.MaxPooling2D(2),
        k.layers.Conv2D(scaled(64, width), 3, padding="same", activation="relu"),
        k.layers.MaxPooling2D(2),
        k.layers.Flatten(),
        k.layers.Dense(scaled(128, width), activation="relu"),
        _head(k, num_classes),
    ], name="digits_cnn")


def breast_cancer_mlp(input_shape, num_classes: int, width: float = 1.0):
    """Dense 128-64-1 with a sigmoid output (the seed's tabular model)."""
    from kfopt.tfenv import keras

    k = keras()
    return k.Sequential([
        k.layers.Input(shape=tuple(input_shape), name="input"),
        k.layers.Dense(scaled(128, width), activation="relu"),
        k.layers.Dense(scaled(64, width), activation="relu"),
        _head(k, num_classes),
    ], name="breast_cancer_mlp")


def _head(k, num_classes: int):
    # float32 head so mixed-precision training still outputs float32 probabilities.
    if num_classes == 2:
        return k.layers.Dense(1, activation="sigmoid", dtype="float32", name="output")
    return k.layers.Dense(num_classes, activation="softmax", dtype="float32", name="output")


ARCHITECTURES: dict[str, Callable] = {"digits_cnn": digits_cnn, "breast_cancer_mlp": breast_cancer_mlp}


def build(name: str, input_shape, num_classes: int, width: float = 1.0):
    if name not in ARCHITECTURES:
        raise ConfigError(f"Unknown model architecture {name!r}; known: {', '.join(ARCHITECTURES)}.")
    if not 0 < width <= 1:
        raise ConfigError(f"Model width multiplier must be in (0, 1], got {width}.")
    return ARCHITECTURES[name](input_shape, num_classes, width)
