"""XLA stage: fixed-batch jit_compile programs, their StableHLO/HLO, and a real XLA round trip on the CPU."""

import numpy as np
import pytest

from kfopt import formats, variant
from kfopt.accelerate import xla_stage
from kfopt.data import dataset as ds_mod
from kfopt.formats import xla as xla_fmt

BATCHES = [1, 16]


@pytest.fixture(scope="module")
def xla_set(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("xla") / "set"
    metrics = xla_stage.run(digits_small["dataset"], digits_small["baseline"], out, batch_sizes=BATCHES)
    return {"dir": out / "xla", "metrics": metrics}


@pytest.fixture(scope="module")
def reference(digits_small):
    """Test split and the baseline SavedModel's outputs for it (no XLA)."""
    x, _ = ds_mod.read(digits_small["dataset"]).split("test")
    base = formats.load(digits_small["baseline"])
    return x, np.concatenate([base.predict(x[i:i + 64]) for i in range(0, len(x), 64)])


def test_programs_and_files(xla_set):
    vdir = xla_set["dir"]
    meta = variant.read(vdir)  # checksums of every file
    assert (meta.format, meta.status, meta.target, meta.parent) == ("xla", "ok", "tpu", "baseline")
    assert [p["batch"] for p in meta.extra["programs"]] == BATCHES
    assert (vdir / xla_fmt.DIRNAME / "saved_model.pb").is_file()
    for program in meta.extra["programs"]:
        stablehlo = (vdir / program["stablehlo"]).read_bytes()
        assert stablehlo.startswith(b"ML\xefR") and len(stablehlo) > 500  # MLIR bytecode
        text = (vdir / program["stablehlo_text"]).read_text()
        assert "stablehlo.convolution" in text and f"tensor<{program['batch']}x8x8x1xf32>" in text
        assert (vdir / program["hlo_text"]).read_text().startswith("HloModule")
    assert meta.extra["tpu"] == "not present: no TPU device on this node" or formats.device_missing("tpu") is None


def test_round_trip_matches_baseline(xla_set, reference):
    x, base = reference
    meta = variant.read(xla_set["dir"])
    runner = formats.load(xla_set["dir"])
    assert runner.marked_for_xla and runner.device == "CPU"
    probs = runner.predict(x)
    assert np.abs(probs - base).max() < 1e-4
    assert (probs.argmax(1) == base.argmax(1)).mean() == 1.0
    check = meta.extra["verification"]
    assert check["xla_marked"] and check["samples"] == len(x) and check["agreement"] == 1.0
    assert check["max_abs_error"] < 1e-4 and xla_set["metrics"]["xla_agreement"] == 1.0


@pytest.mark.parametrize("n", [1, 5, 16, 40])  # exact program, padded, exact, chunked + padded
def test_padding_to_compiled_batches(n, xla_set, reference):
    x, base = reference
    runner = formats.load(xla_set["dir"])
    probs = runner.predict(x[:n])
    assert probs.shape == (n, 10)
    assert np.abs(probs - base[:n]).max() < 1e-4


def test_switched_off(digits_small, tmp_path):
    xla_stage.run(digits_small["dataset"], digits_small["baseline"], tmp_path / "set", enabled=False)
    meta = variant.read(tmp_path / "set" / "xla")
    assert meta.skipped and meta.reason == "switched off by a pipeline parameter (xla_enabled)"


def test_bad_batch_sizes_leave_nothing(digits_small, tmp_path):
    from kfopt.errors import ConfigError

    with pytest.raises(ConfigError, match="positive integers"):
        xla_stage.run(digits_small["dataset"], digits_small["baseline"], tmp_path / "set", batch_sizes=[0, 4])
    assert not (tmp_path / "set").exists()
