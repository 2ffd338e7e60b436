"""Bad input to the optimize stages: each a clear error (or a clamp with a warning), nothing half-written."""

import shutil

import pytest

from kfopt import config
from kfopt.errors import ArtifactError, ConfigError
from kfopt.optimize import distill, prune, quantize


@pytest.mark.parametrize("sparsity", [0.0, 1.0, 1.5, -0.2])
def test_sparsity_outside_0_1(digits_small, tmp_path, sparsity):
    with pytest.raises(ConfigError, match=r"sparsity must be in \(0, 1\)"):
        prune.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "p", sparsities=[0.5, sparsity])
    assert not (tmp_path / "p").exists()


def test_sparsities_naming_the_same_variant_twice(digits_small, tmp_path):
    with pytest.raises(ConfigError, match="same variant twice"):
        prune.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "p", sparsities=[0.8, 0.801])


@pytest.mark.parametrize("stage", [quantize.run, prune.run, distill.run])
def test_budget_below_zero(digits_small, tmp_path, stage):
    with pytest.raises(ConfigError, match="accuracy_budget must be >= 0"):
        stage(digits_small["baseline"], digits_small["dataset"], tmp_path / "o", accuracy_budget=-0.1)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("width", [1.0, 1.5, 2])
def test_student_larger_than_the_teacher(digits_small, tmp_path, width):
    with pytest.raises(ConfigError, match="larger than the teacher"):
        distill.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "d", student_width=width)
    assert not (tmp_path / "d").exists()


def test_calibration_samples_below_one(digits_small, tmp_path):
    with pytest.raises(ConfigError, match="calibration_samples must be at least 1"):
        quantize.run(digits_small["baseline"], digits_small["dataset"], tmp_path / "q", calibration_samples=0)
    assert not (tmp_path / "q").exists()


def test_variant_file_not_matching_its_checksum(digits_small, tmp_path):
    baseline = tmp_path / "baseline"
    shutil.copytree(digits_small["baseline"], baseline)
    with open(baseline / "saved_model" / "saved_model.pb", "ab") as handle:
        handle.write(b"\0")
    for stage in (quantize.run, prune.run, distill.run):
        with pytest.raises(ArtifactError, match="does not match its checksum"):
            stage(baseline, digits_small["dataset"], tmp_path / "o")
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("key, value, message", [
    ("prune.sparsities", [0.5, 1.2], r"sparsity must be in \(0, 1\)"),
    ("prune.epochs", 1, "prune_epochs must be at least 2"),
    ("distill.student_width", 1.5, "larger than the teacher"),
    ("distill.alpha", 2.0, r"distill_alpha .* must be in \[0, 1\]"),
    ("distill.temperature", 0.0, "temperature must be positive"),
    ("verify.accuracy_budget", -1.0, "accuracy_budget must be >= 0"),
    ("quantize.calibration_samples", 0, "calibration_samples must be at least 1"),
    ("quantize.fallback_max_attempts", -1, "fallback_max_attempts must be >= 0"),
])
def test_config_refuses_the_same_values(key, value, message):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=message):
        config.from_dict({section: {name: value}})


def test_every_technique_has_a_switch_in_the_pipeline_parameters():
    names = {name for name, _, _ in config.PARAMS}
    assert {"quantize_enabled", "qat_enabled", "prune_enabled", "distill_enabled", "calibration_samples",
            "prune_sparsities", "student_width", "distill_temperature", "distill_alpha",
            "fallback_max_attempts", "accuracy_budget"} <= names
