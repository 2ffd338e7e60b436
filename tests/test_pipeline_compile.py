"""The compiled pipeline: every stage present, every UI parameter typed with default and description."""

import inspect

import yaml

from kfopt import config
from kfopt.cli import main

KFP_TYPES = {int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN", str: "STRING", list: "LIST",
             dict: "STRUCT"}


def _compile(tmp_path, *args):
    out = tmp_path / "p.yaml"
    assert main(["compile", "-o", str(out), *args]) == 0
    return yaml.safe_load(out.read_text())


def test_signature_matches_config_params():
    from pipelines.kfopt_pipeline import build

    pipeline = build()
    names = list(inspect.signature(pipeline.pipeline_func).parameters)
    assert names == [name for name, _, _ in config.PARAMS]


def test_compiled_parameters_have_types_defaults_descriptions(tmp_path):
    spec = _compile(tmp_path, "--config", "breast_cancer_mlp")
    params = spec["root"]["inputDefinitions"]["parameters"]
    cfg = config.load("breast_cancer_mlp")
    expected = config.pipeline_params(cfg)
    assert set(params) == set(expected)
    for name, value in expected.items():
        p = params[name]
        assert p["parameterType"] == KFP_TYPES[type(value)], name
        assert p["description"] == config.param_description(name)
        assert p["defaultValue"] == value, name
    assert params["model_architecture"]["defaultValue"] == "breast_cancer_mlp"


def test_compiled_dag_has_every_stage(tmp_path):
    spec = _compile(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    assert {"preprocess", "augment", "train", "export", "benchmark_cpu", "benchmark_gpu", "benchmark_tpu",
            "report"} <= names
    report = next(t for t in tasks.values() if t["taskInfo"]["name"] == "report")
    assert {"bench_cpu", "bench_gpu", "bench_tpu"} <= set(report["inputs"]["artifacts"])
    # every task carries kfopt's code version, so caches never reuse output of older code
    assert all("code_version" in t["inputs"]["parameters"] for t in tasks.values())


def test_compile_with_unknown_deployment_is_a_clear_error(tmp_path, capsys):
    assert main(["compile", "-o", str(tmp_path / "x.yaml"), "--deployment", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()
