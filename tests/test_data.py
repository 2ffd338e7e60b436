"""Data stages on real data: load, validate, split, normalize, augment, and every bad-input case."""

import json

import numpy as np
import pytest

from kfopt.data import augment, dataset, preprocess
from kfopt.errors import ArtifactError, KfoptError


def test_preprocess_digits_writes_the_dataset_contract(tmp_path):
    out = tmp_path / "ds"
    metrics = preprocess.run("digits", out, seed=5)
    assert sorted(p.name for p in out.iterdir()) == ["schema.json", "test.npz", "train.npz", "val.npz"]
    ds = dataset.read(out)
    s = ds.schema
    assert (s.task, s.kind, s.num_classes, s.feature_shape) == ("multiclass", "image", 10, [8, 8, 1])
    assert sum(s.counts.values()) == metrics["samples"] == 1797
    xt, yt = ds.split("train")
    # statistics come from train only: train is standardized exactly, test only approximately
    assert abs(float(xt.mean())) < 1e-4 and abs(float(xt.std()) - 1) < 1e-3
    # stratified: every class in every split, proportions close to the whole
    for name in ("train", "val", "test"):
        assert len(np.unique(ds.split(name)[1])) == 10
    assert set(json.loads((out / "schema.json").read_text())["files"]) == {"train.npz", "val.npz", "test.npz"}


def test_split_is_deterministic_for_a_seed(tmp_path):
    preprocess.run("breast_cancer", tmp_path / "a", seed=9)
    preprocess.run("breast_cancer", tmp_path / "b", seed=9)
    preprocess.run("breast_cancer", tmp_path / "c", seed=10)
    a, b, c = (dataset.read(tmp_path / n).split("test")[0] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert dataset.read(tmp_path / "a").schema.task == "binary"


def test_csv_with_text_labels(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["f1,f2,species"] + [f"{rng.normal():.4f},{rng.normal() + (i % 2) * 3:.4f},{'ab'[i % 2]}" for i in range(80)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows))
    preprocess.run(str(path), tmp_path / "ds", label_column="species")
    ds = dataset.read(tmp_path / "ds")
    assert ds.schema.class_names == ["a", "b"] and ds.schema.feature_shape == [2]


def test_npz_input_and_limit(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(300, 6)).astype(np.float32), y=np.arange(300) % 3)
    metrics = preprocess.run(str(tmp_path / "d.npz"), tmp_path / "ds", limit=120)
    assert metrics["samples"] == 120 and metrics["classes"] == 3


def _npz(tmp_path, x, y):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    return str(path)


@pytest.mark.parametrize("case, fragment", [
    ("missing", "no such file"),
    ("empty_csv", "is empty"),
    ("no_label", "has no label column 'label'"),
    ("nan", "NaN feature values"),
    ("out_of_range", "labels are out of range"),
    ("negative", "negative labels"),
    ("single_class", "single class"),
    ("too_small", "at least 50 are needed"),
    ("no_x", "has no array 'x'"),
    ("empty_npz", "is empty"),
    ("wrong_suffix", "Unknown data source"),
    ("not_numeric", "non-numeric feature value"),
])
def test_bad_data_is_one_clear_error_and_writes_nothing(tmp_path, case, fragment):
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    y = np.arange(100) % 2
    source = {
        "missing": lambda: str(tmp_path / "nope.csv"),
        "empty_csv": lambda: (tmp_path / "e.csv").write_text("") and str(tmp_path / "e.csv") or str(tmp_path / "e.csv"),
        "no_label": lambda: (tmp_path / "n.csv").write_text("a,b\n1,2\n") and str(tmp_path / "n.csv"),
        "nan": lambda: _npz(tmp_path, np.where(np.arange(400).reshape(100, 4) == 7, np.nan, x), y),
        "out_of_range": lambda: _npz(tmp_path, x, np.where(y == 1, 5, 0)),
        "negative": lambda: _npz(tmp_path, x, y - 1),
        "single_class": lambda: _npz(tmp_path, x, np.zeros(100, int)),
        "too_small": lambda: _npz(tmp_path, x[:20], y[:20]),
        "no_x": lambda: (np.savez(tmp_path / "q.npz", features=x, y=y), str(tmp_path / "q.npz"))[1],
        "empty_npz": lambda: _npz(tmp_path, x[:0], y[:0]),
        "wrong_suffix": lambda: str(tmp_path / "data.parquet"),
        "not_numeric": lambda: (tmp_path / "t.csv").write_text("a,label\nhello,1\n") and str(tmp_path / "t.csv"),
    }[case]()
    out = tmp_path / "out"
    with pytest.raises(KfoptError) as err:
        preprocess.run(source, out)
    assert fragment in str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_gcs_bucket_that_does_not_exist(gcs, tmp_path):
    from kfopt.errors import StorageError

    with pytest.raises(StorageError, match="does not exist"):
        preprocess.run("gs://no-such-bucket-kfopt/data.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_data_from_gcs(gcs, tmp_path):
    from kfopt import storage

    rng = np.random.default_rng(2)
    local = tmp_path / "d.npz"
    np.savez(local, x=rng.normal(size=(90, 3)).astype(np.float32), y=np.arange(90) % 2)
    uri = gcs.uri("datasets/d.npz")
    storage.write_bytes(uri, local.read_bytes())
    metrics = preprocess.run(uri, tmp_path / "ds")
    assert metrics["samples"] == 90
    assert dataset.read(tmp_path / "ds").schema.provenance["source"] == uri


def test_augment_images_deterministic_and_train_only(tmp_path):
    preprocess.run("digits", tmp_path / "ds", limit=300)
    augment.run(tmp_path / "ds", tmp_path / "a1", factor=1.0, seed=3)
    augment.run(tmp_path / "ds", tmp_path / "a2", factor=1.0, seed=3)
    augment.run(tmp_path / "ds", tmp_path / "a3", factor=1.0, seed=4)
    base, a1, a2, a3 = (dataset.read(tmp_path / n) for n in ("ds", "a1", "a2", "a3"))
    n = len(base.split("train")[1])
    assert len(a1.split("train")[1]) == 2 * n
    assert np.array_equal(a1.split("train")[0], a2.split("train")[0])
    assert not np.array_equal(a1.split("train")[0], a3.split("train")[0])
    for split in ("val", "test"):
        assert np.array_equal(a1.split(split)[0], base.split(split)[0])
    added = a1.split("train")[0][n:]
    assert np.isfinite(added).all() and not np.array_equal(added, base.split("train")[0][:n])


def test_augment_tabular_noise(tmp_path):
    preprocess.run("breast_cancer", tmp_path / "ds")
    augment.run(tmp_path / "ds", tmp_path / "aug", factor=0.5, seed=1, noise_std=0.05)
    base, aug = dataset.read(tmp_path / "ds"), dataset.read(tmp_path / "aug")
    n = len(base.split("train")[1])
    assert len(aug.split("train")[1]) == n + round(0.5 * n)
    assert aug.schema.provenance["augment"]["added"] == round(0.5 * n)


def test_corrupted_dataset_file_is_caught(tmp_path):
    preprocess.run("breast_cancer", tmp_path / "ds")
    with open(tmp_path / "ds" / "test.npz", "ab") as handle:
        handle.write(b"junk")
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        dataset.read(tmp_path / "ds")
