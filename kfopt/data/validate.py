"""Checks that raw samples can be trained on, each failing with one message that says what to fix."""

from __future__ import annotations

import numpy as np

from kfopt.data.load import RawData
from kfopt.errors import DataError


def validate(raw: RawData, min_samples: int, min_per_class: int = 3) -> int:
    """Raise DataError on unusable data; return the number of classes."""
    x, y, src = raw.x, raw.y, raw.source
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise DataError(f"Dataset {src}: features must be (samples, features) or (samples, h, w[, c]), got {x.shape}.")
    if len(x) == 0:
        raise DataError(f"Dataset {src} is empty: it has no samples.")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"Dataset {src}: labels must be one integer class index per sample, got dtype {y.dtype} "
                        f"shape {y.shape}.")
    if len(x) != len(y):
        raise DataError(f"Dataset {src} has {len(x)} feature rows but {len(y)} labels; they must match.")
    if x.dtype.kind != "f":
        raise DataError(f"Dataset {src}: features must be numeric, got dtype {x.dtype}.")
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(len(x), -1))[0])
        kind = "NaN" if np.isnan(x).any() else "infinite"
        raise DataError(f"Dataset {src} has {kind} feature values in {len(rows)} samples (first at row {rows[0]}); "
                        "clean or impute them before running kfopt.")
    if len(x) < min_samples:
        raise DataError(f"Dataset {src} has {len(x)} samples; at least {min_samples} are needed "
                        "(data.min_samples) to split into train/val/test.")
    if (y < 0).any():
        raise DataError(f"Dataset {src} has negative labels (e.g. {int(y[y < 0][0])}); labels must be 0..K-1.")
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"Dataset {src} has a single class ({int(classes[0])}); a classifier needs at least two.")
    n_classes = int(y.max()) + 1
    if len(classes) != n_classes:
        # classes are sorted and unique, so the first missing ones lie below len(classes) + 5
        missing = np.setdiff1d(np.arange(len(classes) + 5), classes)
        raise DataError(f"Dataset {src} labels are out of range: they go up to {n_classes - 1} but classes "
                        f"{missing[missing < n_classes][:5].tolist()} never occur; labels must be 0..K-1 with every class present.")
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() < min_per_class:
        raise DataError(f"Dataset {src}: class {int(counts.argmin())} has {int(counts.min())} samples; "
                        f"each class needs at least {min_per_class} for a stratified train/val/test split.")
    return n_classes
