"""The stage table holds the shape: every setting reaches the run() that uses it, exactly once.

These would have caught `augment.noise_std` (accepted, type-checked, never passed to a stage) and
`bench.min_runs` (validated nowhere, used nowhere). The spy replaces only the stage *function* the row
names, so `kfopt.stages.execute` — the body of every real component — runs as in a task.
"""

import ast
import dataclasses
import inspect
import textwrap
import types
import typing

import pytest

from kfopt import config, stages

#: Config fields no stage reads, and why.
NOT_STAGE_SETTINGS = {
    "name": "names the run folder and is the default publish.model_name",
    "deployment": "chooses images and node pools when the pipeline is compiled",
}


def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def _knob_paths():
    return {path for s in stages.STAGES for path in s.knobs.values()}


def test_every_config_field_is_a_stage_setting():
    unused = set(_fields(config.RunConfig)) - _knob_paths() - set(NOT_STAGE_SETTINGS)
    assert not unused, f"config fields that no stage receives: {sorted(unused)}"


def test_every_stage_setting_is_a_described_pipeline_parameter():
    params = {path: name for name, path, _ in config.PARAMS}
    assert _knob_paths() <= set(params)
    assert set(params) <= _knob_paths(), "a pipeline parameter that no stage receives"
    assert len(set(params.values())) == len(params), "two config paths share a parameter name"
    assert all(desc.strip() for _, _, desc in config.PARAMS)


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_run_accepts_and_uses_every_knob_with_the_config_default(stage):
    func = stage.function()
    sig = inspect.signature(func)
    defaults = config.RunConfig()
    body = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]
    used = {n.id for stmt in body.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    for key, path in stage.knobs.items():
        assert key in sig.parameters, f"{stage.run} has no parameter {key} for {path}"
        assert key in used, f"{stage.run} takes {key} ({path}) but never uses it"
        default = sig.parameters[key].default
        if default not in (inspect.Parameter.empty, None) and path != "publish.model_name":
            expected = config.get_path(defaults, path)
            assert (list(default) if isinstance(default, tuple) else default) == expected, (key, path)
    for key in [*stage.inputs, *stage.optional_inputs, stages.OUT] + ([stage.fan_in] if stage.fan_in else []):
        assert key in sig.parameters, f"{stage.run} has no parameter {key}"


def _distinct(value, tp):
    """A valid value of type `tp` that differs from `value`."""
    origin = typing.get_origin(tp)
    if origin is list:
        return [*value, value[-1]] if value else [1]
    if origin is dict:
        return {**value, "extra": "x"}
    if tp is bool:
        return not value
    if tp is int:
        return value + 3
    if tp is float:
        return value + 0.25
    return f"{value}-changed"


class _Artifact(types.SimpleNamespace):
    def log_metric(self, *_):
        pass


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_each_setting_arrives_at_run(stage, monkeypatch, tmp_path):
    """Through the component body (`execute`), a changed value of every knob reaches run() unchanged."""
    import importlib

    module_name, _, func_name = stage.run.partition(":")
    received = {}
    monkeypatch.setattr(importlib.import_module(module_name), func_name, lambda **kw: received.update(kw) or {})
    monkeypatch.setattr("kfopt.stage_outputs.after", lambda *a, **k: None)
    monkeypatch.setattr("kfopt.stage_outputs.before", lambda *a, **k: None)
    defaults = config.RunConfig()
    values = {key: _distinct(config.get_path(defaults, path), stages.config_type(path))
              for key, path in stage.knobs.items()}
    arguments = dict(values, code_version="test")
    for key, source in {**stage.inputs, **stage.optional_inputs}.items():
        for name in stages.input_names(key, source):
            arguments[name] = _Artifact(path=str(tmp_path / name), metadata={})
    for name, _ in stages.fan_in_sets(stage):
        arguments[name] = _Artifact(path=str(tmp_path / name), metadata={})
    for name in stage.outputs:
        arguments[name] = _Artifact(path=str(tmp_path / name), uri=str(tmp_path / name), metadata={})
    stages.execute(stage.name, arguments, copy=stage.copies[0] if stage.copies else "")
    for key, value in values.items():
        assert received[key] == value, f"{stage.knobs[key]} did not reach {stage.run} as {key}"
    assert received[stages.OUT] == str(tmp_path / next(iter(stage.outputs)))
    if stage.fan_in and not stage.sets:
        assert len(received[stage.fan_in]) == 1 + sum(1 for s in stages.STAGES if s.variants)
    elif stage.fan_in:
        assert len(received[stage.fan_in]) == len(stage.sets)


def test_component_signature_comes_from_the_row():
    from components import function

    quantize = inspect.signature(function(stages.get("quantize")))
    assert list(quantize.parameters)[:2] == ["enabled", "calibration_samples"]
    assert quantize.parameters["calibration_samples"].annotation is int
    assert {"baseline_dir", "dataset_dir", "variants", "metrics", "code_version"} <= set(quantize.parameters)
    bench = inspect.signature(function(stages.get("benchmark")))
    sets = [s.variants for s in stages.STAGES if s.variants]
    assert all(bench.parameters[s].default is None for s in sets)
    assert "baseline" not in bench.parameters  # it is already the baseline_dir input


def test_a_new_format_is_one_row(monkeypatch, tmp_path):
    """A stage added to the table appears in the DAG, and in the benchmark's and publish's inputs."""
    import yaml
    from kfp import compiler

    from kfopt import deployment
    from pipelines.kfopt_pipeline import build

    row = stages.Stage("onnx_sim", "kfopt.export:run", "a made-up format for this test.",
                       knobs={"opset": "export.opset"}, inputs={"baseline_dir": "train.baseline"},
                       variants="simplified", fails_alone=True)
    at = [s.name for s in stages.STAGES].index("benchmark")
    table = (*stages.STAGES[:at], row, *stages.STAGES[at:])
    monkeypatch.setattr(stages, "STAGES", table)
    monkeypatch.setattr(stages, "BY_NAME", {s.name: s for s in table})
    monkeypatch.setattr(deployment, "STAGES", stages.task_names())
    dep = deployment.load("cpu-only")
    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build(dep), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))  # the pipeline spec; the platform spec follows
    tasks = {t["taskInfo"]["name"]: t for t in spec["root"]["dag"]["tasks"].values()}
    assert "onnx_sim" in tasks
    for consumer in ("benchmark_cpu", "benchmark_gpu", "benchmark_tpu", "publish"):
        source = tasks[consumer]["inputs"]["artifacts"]["simplified"]["taskOutputArtifact"]
        assert source["producerTask"] == "onnx-sim"
    assert tasks["report"]["inputs"]["artifacts"]["bench_dirs_gpu"]["taskOutputArtifact"]["producerTask"] == \
        "benchmark-gpu"
