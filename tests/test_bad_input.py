"""Every command × bad input: exit code 2, one `kfopt: error:` line naming the problem and the fix,
no traceback, nothing half-written.

These run the real CLI (`kfopt.cli.main`, and the installed `kfopt` script for a few) on real
files. The KFP API server cannot exist here: the cluster commands are refused before they would
connect, or point at a closed local port (connection refused is the real answer of no server).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kfopt import cli

#: A directory even root cannot create files in (sysfs), for "read-only output path".
UNWRITABLE = Path("/sys")
CLOSED_PORT = "http://127.0.0.1:9"


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse exits itself
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clear_error(code: int, out: str, err: str, fragment: str) -> str:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("kfopt: error: "), lines[0]
    assert fragment in lines[0], lines[0]
    return lines[0]


def write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def package(tmp: Path, image: str = "registry.example/kfopt-cpu:0.1.0", **changes) -> str:
    """A small pipeline package of the shape `kfopt compile` writes (pipelineInfo, root, executors)."""
    spec = {"pipelineInfo": {"name": "kfopt"},
            "root": {"inputDefinitions": {"parameters": {
                "epochs": {"parameterType": "NUMBER_INTEGER"},
                "targets": {"parameterType": "LIST"}}}},
            "deploymentSpec": {"executors": {"exec-train": {"container": {"image": image}}}}}
    spec.update(changes)
    return write(tmp / "package.yaml", yaml.safe_dump(spec))


def npz(tmp: Path, x, y) -> str:
    np.savez(tmp / "data.npz", x=x, y=y)
    return str(tmp / "data.npz")


def deployment_file(tmp: Path, change) -> str:
    from kfopt import deployment

    raw = yaml.safe_load((deployment.deployment_dir() / "cpu-only.yaml").read_text())
    change(raw)
    return write(tmp / "deploy.yaml", yaml.safe_dump(raw))


CONFIG_INPUTS = {
    # id: (extra argv builder, fragment of the message)
    "config-missing": (lambda t: ["--config", str(t / "nope.yaml")], "does not exist"),
    "config-not-yaml": (lambda t: ["--config", write(t / "c.yaml", "train: [1,\n")], "is not valid YAML"),
    "config-binary": (lambda t: ["--config", write(t / "c.yaml", b"\xff\xfe\x00\x81")], "not UTF-8"),
    "config-a-list": (lambda t: ["--config", write(t / "c.yaml", "- 1\n- 2\n")], "must be a mapping"),
    "config-unknown-key": (lambda t: ["--config", write(t / "c.yaml", "trian: {epochs: 1}\n")],
                           "Unknown config key 'trian'"),
    "config-int-keys": (lambda t: ["--config", write(t / "c.yaml", "1: 2\nname: x\n")], "Unknown config key 1"),
    "value-wrong-type": (lambda t: ["--set", "train.epochs=many"], "train.epochs must be int"),
    "value-nan": (lambda t: ["--set", "distill.student_width=.nan"], "must be a finite number"),
    "value-out-of-range": (lambda t: ["--set", "data.val_fraction=0.9"], "data.val_fraction must be in"),
    "set-no-equals": (lambda t: ["--set", "train.epochs"], "--set expects section.key=value"),
    "set-empty-part": (lambda t: ["--set", "train..epochs=3"], "--set expects section.key=value"),
    "set-bad-yaml": (lambda t: ["--set", "train.epochs=[1,"], "is not valid YAML"),
    "set-python-tag": (lambda t: ["--set", "name=!!python/object/apply:os.system [id]"], "is not valid YAML"),
    "set-into-scalar": (lambda t: ["--set", "name.x=1"], "'name' is not a section"),
    "deployment-unknown": (lambda t: ["--deployment", "moon"], "Unknown deployment 'moon'"),
    "deployment-missing-file": (lambda t: ["--deployment", str(t / "d.yaml")], "does not exist"),
    "deployment-not-yaml": (lambda t: ["--deployment", write(t / "d.yaml", "pools: {cpu: [\n")],
                            "is not valid YAML"),
    "deployment-bad-placeholder": (
        lambda t: ["--deployment", deployment_file(
            t, lambda d: d["pools"]["cpu"].update(image="{registry.name}/kfopt-cpu:{tag}"))],
        "may only use the placeholders"),
    "deployment-bad-quantity": (
        lambda t: ["--deployment", deployment_file(
            t, lambda d: d["resources"]["small"].update(cpu_request="lots"))],
        "is not a Kubernetes quantity"),
}

RUN_INPUTS = {
    "data-missing": (lambda t: ["--data", str(t / "nope.csv")], "no such file"),
    "data-folder": (lambda t: ["--data", str((t / "d.csv").mkdir() or t / "d.csv")], "is a folder"),
    "data-suffix": (lambda t: ["--data", write(t / "d.parquet", "x")], "Unknown data source"),
    "data-bucketless-uri": (lambda t: ["--data", "gs:///d.csv"], "no valid bucket name"),
    "model-missing": (lambda t: ["--model", str(t / "nope.keras")], "does not exist"),
    "model-bucketless-uri": (lambda t: ["--model", "gs://Bad_Bucket!/m.keras"], "no valid bucket name"),
    "registry-bucketless-uri": (lambda t: ["--set", "publish.registry=gs://"], "no valid bucket name"),
    "runs-dir-is-a-file": (lambda t: ["--runs-dir", write(t / "runs", "")], "is a file"),
    "runs-dir-unwritable": (lambda t: ["--runs-dir", str(UNWRITABLE / "kfopt-runs")], "Cannot write"),
}


@pytest.mark.parametrize("command", ["run", "compile"])
@pytest.mark.parametrize("case", CONFIG_INPUTS)
def test_config_inputs(capsys, tmp_path, command, case):
    build, fragment = CONFIG_INPUTS[case]
    out_file = tmp_path / "out" / "p.yaml"
    out_file.parent.mkdir()
    extra = ["-o", str(out_file)] if command == "compile" else ["--runs-dir", str(tmp_path / "runs")]
    code, out, err = run_cli(capsys, [command, *build(tmp_path), *extra])
    assert_one_clear_error(code, out, err, fragment)
    assert not list(out_file.parent.iterdir()), "compile left a file behind"
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("case", RUN_INPUTS)
def test_run_inputs_are_checked_before_the_pipeline_starts(capsys, tmp_path, case):
    build, fragment = RUN_INPUTS[case]
    argv = ["run", *build(tmp_path)]
    if "--runs-dir" not in argv:
        argv += ["--runs-dir", str(tmp_path / "runs")]
    code, out, err = run_cli(capsys, argv)
    assert_one_clear_error(code, out, err, fragment)
    assert "running pipeline" not in out, "the check must come before kfp.local starts"
    assert not (tmp_path / "runs").is_dir() or not list((tmp_path / "runs").iterdir())


def test_bad_data_content_fails_in_its_stage_with_one_line_and_no_run_folder(capsys, tmp_path):
    """Content problems are found by the preprocess stage itself: still one line, exit 2; only the
    run's log stays behind (by design: it says what happened), no half-made run folder."""
    source = npz(tmp_path, np.zeros((8, 3), np.float32), np.arange(8) % 2)
    code, out, err = run_cli(capsys, ["run", "--data", source, "--runs-dir", str(tmp_path / "runs")])
    line = assert_one_clear_error(code, out, err, "at least 50 are needed")
    left = sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert len(left) == 1 and left[0].endswith(".failed.log") and left[0] in line, left


def test_a_model_file_that_is_not_a_model_fails_in_its_stage_with_one_line(capsys, tmp_path):
    """A .keras file with garbage in it passes the cheap checks; the stage that loads it says which
    file could not be loaded, in one line (loaders never unpickle or run code from the file)."""
    model = tmp_path / "net.keras"
    model.write_bytes(b"not a keras archive")
    code, out, err = run_cli(capsys, ["run", "--model", str(model), "--runs-dir", str(tmp_path / "runs"),
                                      "--set", "data.limit=200"])
    assert_one_clear_error(code, out, err, str(model))


@pytest.mark.parametrize("output, fragment", [
    ("{tmp}/no/such/dir/p.yaml", "does not exist"),
    ("{tmp}", "is a folder"),
    ("{tmp}/p.json", "is a .yaml file"),
    (f"{UNWRITABLE}/kfopt-p.yaml", "Cannot write"),
])
def test_compile_output_paths(capsys, tmp_path, output, fragment):
    target = output.format(tmp=tmp_path)
    before = sorted(os.listdir(Path(target).parent if not Path(target).is_dir() else target)) \
        if Path(target).parent.is_dir() else None
    code, out, err = run_cli(capsys, ["compile", "-o", target])
    assert_one_clear_error(code, out, err, fragment)
    if before is not None:
        after = os.listdir(Path(target).parent if not Path(target).is_dir() else target)
        assert sorted(after) == before, "a partial package was left behind"


PACKAGE_INPUTS = {
    "missing": (lambda t: str(t / "nope.yaml"), "does not exist"),
    "folder": (lambda t: str(t), "is a folder"),
    "not-yaml-suffix": (lambda t: write(t / "p.json", "{}"), "must be the .yaml file"),
    "invalid-yaml": (lambda t: write(t / "p.yaml", "root: [\n"), "is not valid YAML"),
    "binary": (lambda t: write(t / "p.yaml", b"\xff\xfe\x00"), "is not valid YAML"),
    "a-list": (lambda t: write(t / "p.yaml", "- 1\n"), "is not a compiled KFP pipeline"),
    "malformed-root": (lambda t: write(t / "p.yaml", "root: 1\npipelineInfo: 1\n"),
                       "is not a compiled KFP pipeline"),
    "unpinned-image": (lambda t: package(t, image="python"), "has no tag or digest"),
    "latest-image": (lambda t: package(t, image="python:latest"), "moving tag 'latest'"),
}


@pytest.mark.parametrize("command", ["submit", "upload", "schedule"])
@pytest.mark.parametrize("case", PACKAGE_INPUTS)
def test_cluster_commands_refuse_bad_packages(capsys, tmp_path, command, case):
    build, fragment = PACKAGE_INPUTS[case]
    argv = [command, "--package", build(tmp_path), "--host", CLOSED_PORT]
    if command == "schedule":
        argv += ["--cron", "0 0 3 * * *"]
    assert_one_clear_error(*run_cli(capsys, argv), fragment)


@pytest.mark.parametrize("extra, fragment", [
    (["--param", "epochs"], "must look like NAME=VALUE"),
    (["--param", "epoch=3"], "is not a parameter of pipeline kfopt"),
    (["--param", "epochs=three"], "is not an integer"),
    (["--param", "targets=cpu"], "is not a JSON list"),
    (["--param", "epochs=1", "--param", "epochs=2"], "is given twice"),
    (["--host", "localhost:8080"], "is not an http(s) URL"),
    (["--host", "http://localhost:99999"], "invalid port"),
    (["--sa-token-path", "/nonexistent/token"], "does not exist"),
    ([], "Cannot reach the KFP API at http://127.0.0.1:9"),
])
def test_submit_options(capsys, tmp_path, extra, fragment):
    argv = ["submit", "--package", package(tmp_path)]
    argv += extra if "--host" in extra else ["--host", CLOSED_PORT, *extra]
    assert_one_clear_error(*run_cli(capsys, argv), fragment)


@pytest.mark.parametrize("cron, fragment", [
    ("0 3 * * *", "has 5 fields"),
    ("0 0 3 * * * *", "is not a 6-field cron"),
    ("@sometimes", "is not a schedule KFP knows"),
    ("@every soon", "is not a schedule KFP knows"),
])
def test_schedule_cron(capsys, tmp_path, cron, fragment):
    argv = ["schedule", "--package", package(tmp_path), "--cron", cron, "--host", CLOSED_PORT]
    assert_one_clear_error(*run_cli(capsys, argv), fragment)


def test_schedule_accepts_robfig_descriptors_and_fails_only_on_the_missing_server(capsys, tmp_path):
    argv = ["schedule", "--package", package(tmp_path), "--cron", "@every 1h30m", "--host", CLOSED_PORT]
    assert_one_clear_error(*run_cli(capsys, argv), "Cannot reach the KFP API")


@pytest.mark.parametrize("argv, fragment", [
    (["report", "nosuchrun", "--runs-dir", "{tmp}"], "No run 'nosuchrun'"),
    (["report", "{tmp}/afile"], "is a file"),
    (["models", "list", "--registry", "gs://"], "no valid bucket name"),
    (["models", "list", "--registry", "{tmp}/afile"], "is a file"),
    (["models", "show", "digits_cnn", "--version", "v1", "--registry", "{tmp}"], "is not a version number"),
    (["models", "show", "digits_cnn", "--version", "0", "--registry", "{tmp}"], "is not a version number"),
    (["models", "show", "nobody", "--registry", "{tmp}"], "No model 'nobody'"),
    (["models", "list", "--config", "{tmp}/nope.yaml"], "does not exist"),
    (["models"], "models: the following arguments are required"),
    (["compile", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["doctor", "--timeout", "0"], "is not a number of seconds"),
    (["doctor", "--timeout", "nan"], "is not a number of seconds"),
])
def test_report_models_and_argument_errors(capsys, tmp_path, argv, fragment):
    (tmp_path / "afile").write_text("")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert_one_clear_error(*run_cli(capsys, argv), fragment)


def _kfopt_script() -> list[str]:
    script = Path(sys.executable).parent / "kfopt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kfopt.cli"]


@pytest.mark.parametrize("argv, fragment", [
    (["compile", "-o", "/nonexistent/dir/x.yaml"], "the folder /nonexistent/dir does not exist"),
    (["compile", "-o", f"{UNWRITABLE}/x.yaml"], "Cannot write"),
    (["submit", "--package", "{tmp}/weird.yaml"], "is not a compiled KFP pipeline"),
])
def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path, argv, fragment):
    (tmp_path / "weird.yaml").write_text("root: 1\npipelineInfo: {name: 1}\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    result = subprocess.run([*_kfopt_script(), *argv], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert_one_clear_error(result.returncode, result.stdout, result.stderr, fragment)
