"""Shared fixtures. The GCS fixture starts a real GCS-protocol server (gcp-storage-emulator) on 127.0.0.1."""

import os
import sys
from pathlib import Path

import pytest

from gcs_emulator import gcs  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory):
    """A real Dataset artifact + trained baseline variant on a 500-sample digits slice (~15 s once)."""
    from kfopt.data import preprocess
    from kfopt.models import train

    root = tmp_path_factory.mktemp("digits_small")
    preprocess.run("digits", root / "dataset", limit=500, seed=3)
    train.run(root / "dataset", root / "baseline", architecture="digits_cnn", epochs=8, patience=3, seed=1)
    return {"dataset": root / "dataset", "baseline": root / "baseline", "root": root}


@pytest.fixture(scope="session")
def cancer_small(tmp_path_factory):
    """A real tabular binary Dataset artifact + trained MLP baseline (breast cancer)."""
    from kfopt.data import preprocess
    from kfopt.models import train

    root = tmp_path_factory.mktemp("cancer_small")
    preprocess.run("breast_cancer", root / "dataset", seed=3)
    train.run(root / "dataset", root / "baseline", architecture="breast_cancer_mlp", epochs=20, patience=4, seed=1)
    return {"dataset": root / "dataset", "baseline": root / "baseline", "root": root}
