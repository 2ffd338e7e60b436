"""Load raw samples from a bundled set, a CSV or an NPZ, from a local path or a gs:// URI."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kfopt import storage
from kfopt.errors import DataError

BUNDLED = ("digits", "breast_cancer")


@dataclass
class RawData:
    x: np.ndarray
    y: np.ndarray
    kind: str  # "image" or "tabular"
    source: str
    class_names: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)


def _bundled(name: str) -> RawData:
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
        x = bunch.images.astype(np.float32)[..., None]  # (n, 8, 8, 1), values 0..16
        return RawData(x, bunch.target.astype(np.int64), "image", "sklearn:digits",
                       [str(c) for c in bunch.target_names])
    bunch = datasets.load_breast_cancer()
    return RawData(bunch.data.astype(np.float32), bunch.target.astype(np.int64), "tabular",
                   "sklearn:breast_cancer", [str(c) for c in bunch.target_names], list(bunch.feature_names))


_MAX_LABEL = 2**31 - 1  # far above any class count; keeps int64 casts exact


def _encode_labels(raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer labels stay as they are (range is validated later); text labels become 0..K-1."""
    if raw.dtype.kind in "iuf":
        if raw.dtype.kind == "f" and not (np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))):
            raise DataError("Labels must be integers or class names; found non-integer numbers in the label data.")
        if raw.size and max(abs(float(raw.max())), abs(float(raw.min()))) > _MAX_LABEL:
            raise DataError(f"Labels range from {raw.min()} to {raw.max()}; integer labels must be class "
                            "indices 0..K-1.")
        return raw.astype(np.int64), []
    if raw.dtype.kind not in "USb":
        raise DataError(f"Labels must be integers or class names, got dtype {raw.dtype}.")
    try:
        text = raw.astype(str)
    except UnicodeDecodeError:
        raise DataError("Labels are bytes that are not text; store class names as UTF-8 strings.") from None
    names, codes = np.unique(text, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [str(n) for n in names]


def _csv(path: Path, label_column: str, source: str) -> RawData:
    import csv

    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if row]  # blank lines carry no sample
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Cannot read CSV {source}: {exc}; save it as UTF-8 comma-separated text.") from None
    if not rows:
        raise DataError(f"CSV {source} is empty: it has no header and no rows.")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if label_column not in header:
        raise DataError(f"CSV {source} has no label column {label_column!r} (columns: {', '.join(header[:12])}); "
                        "set data.label_column in the config or --label-column.")
    if not body:
        raise DataError(f"CSV {source} has a header but no data rows.")
    li = header.index(label_column)
    features = [h for i, h in enumerate(header) if i != li]
    x = np.empty((len(body), len(features)), np.float32)
    labels = []
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"CSV {source} line {r} has {len(row)} fields, the header has {len(header)}.")
        labels.append(row[li].strip())
        if not labels[-1]:
            raise DataError(f"CSV {source} line {r} has no label in column {label_column!r}; label every row.")
        try:
            x[r - 2] = [float(v) if v.strip() else np.nan for i, v in enumerate(row) if i != li]
        except ValueError:
            raise DataError(f"CSV {source} line {r} has a non-numeric feature value; features must be numbers.") from None
    y_raw = np.array(labels)
    try:
        y_raw = y_raw.astype(np.int64)
    except ValueError:
        pass
    y, names = _encode_labels(y_raw)
    return RawData(x, y, "tabular", source, names, features)


def _npz(path: Path, source: str) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(f"NPZ {source} has no array {missing[0]!r}; it needs 'x' (features) and 'y' (labels), "
                                f"found: {', '.join(data.files) or 'nothing'}.")
            x, y = data["x"], data["y"]
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read NPZ {source}: {exc}.") from None
    if x.dtype.kind not in "fiu":
        raise DataError(f"NPZ {source}: features 'x' must be numeric, got dtype {x.dtype}.")
    if x.ndim < 2:
        raise DataError(f"NPZ {source}: features 'x' must be (samples, features) or (samples, h, w[, c]), "
                        f"got shape {x.shape}.")
    if y.ndim > 1 and y.shape[1:] != (1,):
        raise DataError(f"NPZ {source}: labels 'y' must be one class index per sample, got shape {y.shape}; "
                        "for one-hot labels save y.argmax(axis=1).")
    y, names = _encode_labels(np.asarray(y).reshape(-1))
    kind = "image" if x.ndim >= 3 else "tabular"
    if x.ndim == 3:
        x = x[..., None]
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which validate() reports
        return RawData(x.astype(np.float32), y, kind, source, names)


def _suffix(source: str) -> str:
    return Path(source.split("?")[0]).suffix.lower()


def check_source(source: str) -> None:
    """The checks that need no reading: a bundled name, or a .csv/.npz gs:// URI or existing local file."""
    if source in BUNDLED:
        return
    if _suffix(source) not in (".csv", ".npz"):
        raise DataError(f"Unknown data source {source!r}: use a bundled set ({', '.join(BUNDLED)}) "
                        "or a .csv / .npz file path or gs:// URI.")
    if storage.is_gcs(source):
        storage.parse_gcs(source)
        return
    path = Path(source)
    if not path.exists():
        raise DataError(f"no such file {source}; check the data path (--data, data.source).")
    if path.is_dir():
        raise DataError(f"Data source {source} is a folder; point to a .csv or .npz file.")


def load(source: str, label_column: str = "label") -> RawData:
    """A bundled name, or a .csv/.npz path or gs:// URI."""
    if source in BUNDLED:
        return _bundled(source)
    suffix = _suffix(source)
    check_source(source)
    with tempfile.TemporaryDirectory(prefix="kfopt-data-") as tmp:
        path = storage.fetch(source, Path(tmp))
        if path.is_dir():
            raise DataError(f"Data source {source} is a folder; point to a .csv or .npz file.")
        return _csv(path, label_column, source) if suffix == ".csv" else _npz(path, source)
