"""The Dataset artifact: train.npz, val.npz, test.npz and schema.json in one folder.

schema.json holds the task, feature shape and dtype, class count and names, the normalization
statistics (computed on train only; the features stored are already normalized, and a deployment
applies the same statistics), provenance, and the sha256 of each file (checked on read).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.errors import ArtifactError

SPLITS = ("train", "val", "test")


@dataclass
class Schema:
    task: str  # "multiclass" or "binary"
    kind: str  # "image" or "tabular"
    feature_shape: list[int]
    feature_dtype: str
    num_classes: int
    class_names: list[str]
    normalization: dict[str, Any]  # {"method": "standardize", "mean": [...], "std": [...]} or {"method": "none"}
    counts: dict[str, int]
    provenance: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class Dataset:
    schema: Schema
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.splits[name]


def write(out_dir: Path, ds: Dataset) -> None:
    """Write into `out_dir` (the caller makes it atomic with variant.staged_dir)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        x, y = ds.splits[name]
        np.savez(out / f"{name}.npz", x=x.astype(np.float32), y=y.astype(np.int64))
    ds.schema.counts = {name: int(len(ds.splits[name][1])) for name in SPLITS}
    ds.schema.files = {f"{n}.npz": variant.sha256_file(out / f"{n}.npz") for n in SPLITS}
    (out / "schema.json").write_text(json.dumps(asdict(ds.schema), indent=2))


def read(path: Path, verify: bool = True) -> Dataset:
    root = Path(path)
    schema_path = root / "schema.json"
    if not schema_path.is_file():
        raise ArtifactError(f"{root} is not a kfopt Dataset artifact: schema.json is missing.")
    schema = Schema(**json.loads(schema_path.read_text()))
    splits = {}
    for name in SPLITS:
        file = root / f"{name}.npz"
        if not file.is_file():
            raise ArtifactError(f"Dataset {root}: {name}.npz is missing.")
        if verify and variant.sha256_file(file) != schema.files.get(f"{name}.npz"):
            raise ArtifactError(f"Dataset {root}: {name}.npz does not match its checksum in schema.json; "
                                "re-run preprocess.")
        with np.load(file, allow_pickle=False) as data:
            splits[name] = (data["x"], data["y"])
    return Dataset(schema, splits)
