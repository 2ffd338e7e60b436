"""The preprocess stage: load → validate → stratified split → normalize (train statistics) → artifact.

Normalization contract: kfopt's standardization belongs to the models kfopt trains. A model the user
brings (`model_uri`) was trained on inputs kfopt cannot know, so with `normalize="auto"` (the
default) it gets the data exactly as given; only an explicit `normalize="standardize"` transforms
it. `auto` is resolved here, in the stage, so it holds for every entry point (CLI, config, a
Kubeflow UI run that sets only `model_uri`), and schema.json records the method and why.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.data.load import load
from kfopt.data.validate import validate
from kfopt.errors import ConfigError

NORMALIZE = ("auto", "standardize", "none")


def _stratified_limit(x: np.ndarray, y: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if not limit or limit >= len(y):
        return x, y
    keep, _ = train_test_split(np.arange(len(y)), train_size=limit, stratify=y, random_state=seed)
    keep.sort()
    return x[keep], y[keep]


def _normalization(x_train: np.ndarray, kind: str) -> dict[str, Any]:
    # Images share one statistic per channel; tabular features get one per column.
    axes = tuple(range(x_train.ndim - 1)) if kind == "image" else (0,)
    mean = x_train.mean(axis=axes)
    std = x_train.std(axis=axes)
    std = np.where(std < 1e-6, 1.0, std)
    return {"method": "standardize", "mean": mean.astype(float).tolist(), "std": std.astype(float).tolist()}


def resolve_normalize(normalize: str, model_uri: str) -> tuple[str, str]:
    """(method, why) for `normalize` = auto | standardize | none; auto depends on who made the model."""
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r} (data.normalize, "
                          "pipeline parameter normalize, kfopt run --normalize).")
    if normalize == "auto" and model_uri:
        return "none", "auto: a model was brought (model_uri), so it gets the data exactly as given"
    if normalize == "auto":
        return "standardize", "auto: kfopt trains the model, so features are standardized (training-split statistics)"
    if model_uri and normalize == "standardize":
        return normalize, ("asked for (normalize=standardize): the brought model gets features standardized with "
                           "training-split statistics, so it must have been trained on such features")
    return normalize, f"asked for (normalize={normalize})"


def apply_normalization(x: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    if norm.get("method") != "standardize":
        return x.astype(np.float32)
    return ((x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)).astype(np.float32)


def run(source: str, out_dir: Path, *, label_column: str = "label", val_fraction: float = 0.15,
        test_fraction: float = 0.2, seed: int = 42, limit: int = 0, min_samples: int = 50,
        normalize: str = "auto", model_uri: str = "") -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    method, why = resolve_normalize(normalize, model_uri)
    raw = load(source, label_column)
    validate(raw, min_samples)
    x, y = _stratified_limit(raw.x, raw.y, limit, seed)
    n_classes = validate(type(raw)(x, y, raw.kind, raw.source), min_samples)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest],
                                  random_state=seed)
    norm = _normalization(x[train], raw.kind) if method == "standardize" else {"method": "none"}
    norm.update(requested=normalize, reason=why)
    splits = {name: (apply_normalization(x[ix], norm), y[ix]) for name, ix in
              (("train", train), ("val", val), ("test", test))}
    schema = ds_mod.Schema(
        task="binary" if n_classes == 2 else "multiclass", kind=raw.kind,
        feature_shape=list(x.shape[1:]), feature_dtype="float32", num_classes=n_classes,
        class_names=raw.class_names or [str(i) for i in range(n_classes)], normalization=norm, counts={},
        provenance={"source": raw.source, "label_column": label_column if source.endswith(".csv") else None,
                    "seed": seed, "limit": limit, "val_fraction": val_fraction, "test_fraction": test_fraction,
                    "feature_names": raw.feature_names, "created": datetime.datetime.now(datetime.UTC).isoformat()})
    with variant.staged_dir(Path(out_dir)) as tmp:
        ds_mod.write(tmp, ds_mod.Dataset(schema, splits))
    return {"samples": int(len(y)), "classes": n_classes, "train": int(len(train)), "val": int(len(val)),
            "test": int(len(test)), "features": int(np.prod(x.shape[1:])), "normalization": method}
