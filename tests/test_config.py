"""Configuration: shipped configs load, bad keys/types/values fail with one clear message."""

import pytest

from kfopt import config
from kfopt.errors import ConfigError


@pytest.mark.parametrize("name", ["digits_cnn", "breast_cancer_mlp"])
def test_shipped_configs_load(name):
    cfg = config.load(name)
    assert cfg.name == name
    assert cfg.model.architecture == name


def test_params_cover_every_documented_setting():
    params = config.pipeline_params(config.load("breast_cancer_mlp"))
    assert params["model_architecture"] == "breast_cancer_mlp"
    assert params["data_uri"] == "breast_cancer"
    assert all(config.param_description(name) for name in params)


@pytest.mark.parametrize("raw, fragment", [
    ({"train": {"epoch": 3}}, "Unknown config key 'epoch' in section 'train'"),
    ({"colour": "red"}, "Unknown config key 'colour' in the top level"),
    ({"train": {"epochs": "ten"}}, "train.epochs must be int"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be int"),
    ({"augment": {"enabled": "yes"}}, "augment.enabled must be bool"),
    ({"bench": {"batch_sizes": 64}}, "bench.batch_sizes must be a list"),
    ({"model": {"architecture": "resnet9000"}}, "Unknown model architecture 'resnet9000'"),
    ({"data": {"test_fraction": 0.9}}, "data.test_fraction must be in (0, 0.5)"),
    ({"verify": {"accuracy_budget": -1}}, "accuracy_budget must be >= 0"),
    ({"train": "fast"}, "train must be a mapping"),
    ({"select": {"targets": ["phone"]}}, "unknown deployment target 'phone'"),
    ({"select": {"objectives": {"cpu": "speed"}}}, "Unknown objective 'speed'"),
    ({"search": {"time_budget_s": 0}}, "search.time_budget_s must be > 0 seconds"),
])
def test_bad_config_is_one_clear_error(raw, fragment):
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert fragment in str(err.value)


def test_int_is_accepted_where_float_is_expected():
    assert config.from_dict({"train": {"learning_rate": 1}}).train.learning_rate == 1.0


def test_missing_config_file_lists_shipped_configs(tmp_path):
    with pytest.raises(ConfigError, match="shipped configs: .*digits_cnn"):
        config.load("no_such_config")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(path)
