"""kfopt's own models written in torch: the same layers as the Keras ones in kfopt.models.architectures.

A module takes the dataset's features exactly as they are stored (images NHWC, like the Keras
models, so every runner is fed the same array) and returns probabilities (softmax, or one sigmoid
unit for a binary task); `logits` is what training's loss uses. `feature_shape` travels with the
module so it can be exported (torch.export needs an example input) without the dataset.
torch is imported lazily: `TORCH_ARCHITECTURES` and `check` are light.
"""

from __future__ import annotations

import functools

from kfopt.errors import ConfigError
from kfopt.models.architectures import ARCHITECTURES, scaled

TORCH_ARCHITECTURES = ("digits_cnn", "breast_cancer_mlp")


def check(name: str) -> None:
    """One clear error for an architecture kfopt cannot build in torch."""
    if name in TORCH_ARCHITECTURES:
        return
    if name in ARCHITECTURES:
        raise ConfigError(f"Architecture {name!r} exists only for Keras; with model.framework: torch use one of "
                          f"{', '.join(TORCH_ARCHITECTURES)}, or set model.framework: keras.")
    raise ConfigError(f"Unknown model architecture {name!r}; known in torch: {', '.join(TORCH_ARCHITECTURES)}.")


def build(name: str, feature_shape, num_classes: int, width: float = 1.0):
    check(name)
    if not 0 < width <= 1:
        raise ConfigError(f"Model width multiplier must be in (0, 1], got {width}.")
    module = _classes()[name](list(feature_shape), num_classes, width)
    module.feature_shape = list(feature_shape)
    module.architecture = name
    return module


@functools.cache
def _classes():
    import torch
    from torch import nn

    class Classifier(nn.Module):
        """Probabilities out; a binary task has one sigmoid unit (as the Keras head)."""

        def __init__(self, num_classes: int):
            super().__init__()
            self.binary = num_classes == 2

        def forward(self, x):
            z = self.logits(x)
            return torch.sigmoid(z) if self.binary else torch.softmax(z, dim=-1)

    class DigitsCNN(Classifier):
        """Conv-32 / MaxPool / Conv-64 / MaxPool / Dense-128 / Dense-classes, on NHWC input."""

        def __init__(self, feature_shape, num_classes: int, width: float):
            super().__init__(num_classes)
            h, w, c = feature_shape
            c1, c2, d = scaled(32, width), scaled(64, width), scaled(128, width)
            self.conv1 = nn.Conv2d(c, c1, 3, padding=1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(c2 * (h // 4) * (w // 4), d)
            self.out = nn.Linear(d, 1 if self.binary else num_classes)

        def logits(self, x):
            x = x.permute(0, 3, 1, 2)
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            return self.out(torch.relu(self.fc(x.flatten(1))))

    class BreastCancerMLP(Classifier):
        """Dense 128-64 then the head, on flat features."""

        def __init__(self, feature_shape, num_classes: int, width: float):
            super().__init__(num_classes)
            (features,) = feature_shape
            self.fc1 = nn.Linear(features, scaled(128, width))
            self.fc2 = nn.Linear(scaled(128, width), scaled(64, width))
            self.out = nn.Linear(scaled(64, width), 1 if self.binary else num_classes)

        def logits(self, x):
            return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    return {"digits_cnn": DigitsCNN, "breast_cancer_mlp": BreastCancerMLP}
