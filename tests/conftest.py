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
