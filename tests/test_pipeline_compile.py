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
    return next(yaml.safe_load_all(out.read_text()))  # the pipeline spec; a platform spec may follow


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
    from kfopt import stages

    spec = _compile(tmp_path)
    tasks = {t["taskInfo"]["name"]: t for t in spec["root"]["dag"]["tasks"].values()}
    assert set(tasks) == set(stages.task_names())
    report = tasks["report"]
    assert {"bench_dirs_cpu", "bench_dirs_gpu", "bench_dirs_tpu"} <= set(report["inputs"]["artifacts"])
    # every variant set reaches every benchmark task and the publish task
    sets = {s.variants for s in stages.STAGES if s.variants}
    for name in ("benchmark_cpu", "benchmark_gpu", "benchmark_tpu", "publish"):
        assert sets <= set(tasks[name]["inputs"]["artifacts"]), name
    # every task carries kfopt's code version, so caches never reuse output of older code
    assert all("code_version" in t["inputs"]["parameters"] for t in tasks.values())
    # every setting a stage's row names is wired from the pipeline parameter of that setting
    param_of = {path: name for name, path, _ in config.PARAMS}
    for stage in stages.STAGES:
        for task_name in stage.task_names():
            given = tasks[task_name]["inputs"]["parameters"]
            for key, path in stage.knobs.items():
                assert given[key]["componentInputParameter"] == param_of[path], (task_name, key)


def test_compile_with_unknown_deployment_is_a_clear_error(tmp_path, capsys):
    assert main(["compile", "-o", str(tmp_path / "x.yaml"), "--deployment", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()
