"""kfopt.publish, kfopt.registry and kfopt.triton against a local registry folder, from one real small run.

The inputs are a real trained/exported/benchmarked/reported run (tests/publish_inputs.py); a later
retraining run is simulated by editing a copy of its report.json (worse accuracy, slower, another
machine, nothing verified). tests/test_registry_gcs.py runs the same against a GCS-protocol server.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from publish_inputs import (NAME, check_no_interleaving, chosen_rows, concurrent_publish, edited_report,
                            parse_triton_config, retrained_roots, run_outputs)  # noqa: F401 (run_outputs: fixture)

from kfopt import cli, config, local_run, registry, report, select, triton, variant
from kfopt import publish as publish_mod
from kfopt.errors import ArtifactError, ConfigError, StorageError
from kfopt.registry import Registry

TYPE_FP32, KIND_CPU, KIND_GPU = 11, 2, 1


def publish(run, reg, out, report_dir=None, roots=None, **kwargs):
    return publish_mod.run(report_dir or run["report_dir"], roots or run["roots"], str(reg), NAME, out,
                           dataset_dir=run["dataset"], **kwargs)


def republish(run, reg, out, report_dir=None, only=None, **kwargs):
    """A later run: its variants' files differ from the first run's (retrained), its report as given."""
    roots = retrained_roots(run, Path(out).with_name(f"{Path(out).name}-variants"), Path(out).name, only)
    return publish(run, reg, out, report_dir, roots, **kwargs)


def models(reg: Path) -> Path:
    return reg / "models"


def promoted_version(reg: Path, target: str = "cpu") -> int | None:
    promo = Registry(str(reg)).promoted(target, NAME)
    return promo.version if promo else None


# --- layout and versions -------------------------------------------------------------------------


def test_first_publish_writes_the_registry_layout(run_outputs, tmp_path):
    reg, out = tmp_path / "registry", tmp_path / "out"
    result = publish(run_outputs, reg, out)
    rep, m = run_outputs["report"], models(reg)
    assert result["version"] == 1
    assert variant.read(m / "trained_models" / NAME / "v1").name == rep["baseline"]["name"]  # checksums checked
    verified = {r["name"] for r in rep["rows"] if select.passed(r)} - {rep["baseline"]["name"]}
    assert verified and sorted(os.listdir(m / "optimized_models" / NAME / "v1")) == sorted(verified)
    for name in verified:
        assert variant.read(m / "optimized_models" / NAME / "v1" / name).name == name
    version_dir = m / "versions" / NAME / "v1"
    assert json.loads((version_dir / "claim.json").read_text())["run_id"] == result["run_id"]
    assert json.loads((version_dir / "publish.json").read_text()) == result
    assert json.loads((out / "publish.json").read_text()) == result
    assert json.loads((version_dir / "report.json").read_text()) == rep

    chosen = rep["choices"]["cpu"]["chosen"]
    row = next(r for r in rep["rows"] if r["name"] == chosen and r["hardware"] == "cpu")
    deployment = m / "deployment_models" / "cpu" / NAME / "v1"
    card_bytes = (deployment / "model_card.json").read_bytes()
    card = json.loads(card_bytes)
    assert (card["name"], card["version"], card["target"], card["variant"]["name"]) == (NAME, 1, "cpu", chosen)
    assert card["metrics"]["accuracy"] == row["accuracy"] and card["metrics"]["latency"] == row["latency"]
    assert card["budget"] == rep["budget"] and card["environment"]["fingerprint"] == rep["environments"]["cpu"]
    assert card["lineage"]["baseline"]["uri"] == str(m / "trained_models" / NAME / "v1")
    schema = json.loads((run_outputs["dataset"] / "schema.json").read_text())
    assert card["lineage"]["dataset"]["files"] == schema["files"]
    assert card["gate"]["previous"] is None and card["gate"]["decision"] == "promoted"
    assert variant.read(deployment / "model").name == chosen
    record = json.loads((m / "deployment_models" / "cpu" / NAME / "promotions" / "000001" / "claim.json").read_text())
    assert record["version"] == 1 and record["card_sha256"] == hashlib.sha256(card_bytes).hexdigest()

    for target in ("cpu", "edge", "gpu", "tpu"):
        assert json.loads((out / "blessings" / f"{target}.json").read_text()) == result["targets"][target]
    cpu = result["targets"]["cpu"]
    assert (cpu["blessed"], cpu["decision"], cpu["variant"], cpu["serving_version"]) == (True, "promoted", chosen, 1)
    gpu = result["targets"]["gpu"]
    assert (gpu["blessed"], gpu["decision"]) == (False, "none")
    assert "no variant passed" in gpu["reasons"][0] and gpu["reasons"][1] == "no model is promoted for gpu yet"
    assert not (m / "deployment_models" / "gpu").exists()
    assert (out / "publish.md").read_text().startswith("## Publishing")


def test_next_run_gets_the_next_version_and_an_equal_model_is_promoted(run_outputs, tmp_path):
    reg = tmp_path / "r"
    assert publish(run_outputs, reg, tmp_path / "o1")["version"] == 1
    second = republish(run_outputs, reg, tmp_path / "o2")
    cpu = second["targets"]["cpu"]
    assert second["version"] == 2 and cpu["decision"] == "promoted" and cpu["previous"]["version"] == 1
    assert cpu["latency_compared"] is True and any("same environment" in r for r in cpu["reasons"])
    assert promoted_version(reg) == 2 and Registry(str(reg)).versions(NAME) == [1, 2]


def test_a_rerun_with_byte_identical_variants_creates_no_version(run_outputs, tmp_path):
    reg = tmp_path / "r"
    first = publish(run_outputs, reg, tmp_path / "o1")
    again = publish(run_outputs, reg, tmp_path / "o2")  # same variant files: a cached rerun
    r = Registry(str(reg))
    assert again["version"] is None and again["unchanged"] is True and r.versions(NAME, complete=False) == [1]
    promoted = [t for t, b in first["targets"].items() if b["decision"] == "promoted"]
    assert promoted
    for target in promoted:
        b = again["targets"][target]
        assert (b["decision"], b["blessed"], b["serving_version"]) == ("unchanged", True, 1)
        assert b["reasons"][0] == "already promoted as v1 (byte-identical: the sha256 of every file matches)"
        assert r.promoted(target, NAME).number == 1
    assert not (models(reg) / "deployment_models" / "cpu" / NAME / "v2").exists()
    assert json.loads((tmp_path / "o2" / "publish.json").read_text()) == again
    text = publish_mod.text(again)
    assert "no new version" in text and f"cpu: {again['targets']['cpu']['variant']} already promoted as v1" in text


def test_only_targets_whose_chosen_variant_changed_get_a_new_promotion(run_outputs, tmp_path):
    reg = tmp_path / "r"
    first = publish(run_outputs, reg, tmp_path / "o1")
    edge = first["targets"]["edge"]
    assert edge["decision"] == "promoted"

    def cpu_prefers_onnx(rep):
        onnx = [r for r in rep["rows"] if r["format"] == "onnx"]
        rep["choices"]["cpu"] = select.choose(onnx, ["cpu"], {"cpu": "latency:1"})["cpu"]

    later = edited_report(run_outputs, tmp_path / "rep", cpu_prefers_onnx)
    second = publish(run_outputs, reg, tmp_path / "o2", later, latency_tolerance=100.0)
    assert second["version"] == 2 and Registry(str(reg)).versions(NAME) == [1, 2]
    cpu = second["targets"]["cpu"]
    assert (cpu["decision"], cpu["variant"]) == ("promoted", "onnx_fp32") and promoted_version(reg) == 2
    again = second["targets"]["edge"]
    assert (again["decision"], again["variant"]) == ("unchanged", edge["variant"])
    assert again["reasons"][0].startswith("already promoted as v1") and promoted_version(reg, "edge") == 1
    assert not (models(reg) / "deployment_models" / "edge" / NAME / "v2").exists()


# --- the regression gate -------------------------------------------------------------------------


@pytest.mark.parametrize("drop_pp, promoted", [(2.0, False), (0.3, True)])
def test_gate_on_accuracy_keeps_the_old_model_beyond_the_tolerance(run_outputs, tmp_path, drop_pp, promoted):
    reg = tmp_path / "r"
    publish(run_outputs, reg, tmp_path / "o1")

    def less_accurate(rep):
        for row in chosen_rows(rep):
            row["accuracy"] -= drop_pp / 100

    result = republish(run_outputs, reg, tmp_path / "o2", edited_report(run_outputs, tmp_path / "rep", less_accurate))
    cpu = result["targets"]["cpu"]
    assert cpu["blessed"] is promoted and promoted_version(reg) == (2 if promoted else 1)
    assert (models(reg) / "deployment_models" / "cpu" / NAME / "v2").exists() is promoted
    if not promoted:
        assert cpu["decision"] == "kept" and cpu["serving_version"] == 1
        assert f"{drop_pp:.2f} pp below v1's" in cpu["reasons"][0] and cpu["reasons"][-1] == "v1 stays in service"


@pytest.mark.parametrize("factor, promoted", [(1.5, False), (1.05, True)])
def test_gate_on_latency_compares_the_same_environment(run_outputs, tmp_path, factor, promoted):
    reg = tmp_path / "r"
    publish(run_outputs, reg, tmp_path / "o1")

    def slower(rep):
        for row in chosen_rows(rep):
            row["latency"]["1"]["p50_ms"] *= factor

    result = republish(run_outputs, reg, tmp_path / "o2", edited_report(run_outputs, tmp_path / "rep", slower),
                     latency_tolerance=0.10)
    cpu = result["targets"]["cpu"]
    assert cpu["blessed"] is promoted and cpu["latency_compared"] is True
    assert promoted_version(reg) == (2 if promoted else 1)
    if not promoted:
        assert "50% above v1's" in cpu["reasons"][1] and "tolerance 10%" in cpu["reasons"][1]


@pytest.mark.parametrize("growth, promoted", [(1.5, False), (1.05, True)])
def test_edge_is_gated_on_its_size_objective(run_outputs, tmp_path, growth, promoted):
    reg = tmp_path / "r"
    publish(run_outputs, reg, tmp_path / "o1")

    def bigger_and_slower(rep):
        for row in chosen_rows(rep, "edge"):
            row["size_gzip_bytes"] = int(row["size_gzip_bytes"] * growth)
            row["latency"]["1"]["p50_ms"] *= 3  # latency is not the edge objective: must not decide

    result = republish(run_outputs, reg, tmp_path / "o2", edited_report(run_outputs, tmp_path / "rep", bigger_and_slower),
                     latency_tolerance=0.10)
    edge = result["targets"]["edge"]
    assert edge["blessed"] is promoted
    assert any("gzipped size" in r for r in edge["reasons"])
    assert promoted_version(reg, "edge") == (2 if promoted else 1)


def test_gate_does_not_compare_latency_across_environments(run_outputs, tmp_path):
    reg = tmp_path / "r"
    publish(run_outputs, reg, tmp_path / "o1")

    def elsewhere_and_slower(rep):
        rep["environments"]["cpu"]["cpu"] = "Another CPU model"
        for row in chosen_rows(rep):
            row["latency"]["1"]["p50_ms"] *= 3

    later = edited_report(run_outputs, tmp_path / "rep", elsewhere_and_slower)
    result = republish(run_outputs, reg, tmp_path / "o2", later)
    cpu = result["targets"]["cpu"]
    assert cpu["decision"] == "promoted" and cpu["latency_compared"] is False
    card = json.loads((models(reg) / "deployment_models" / "cpu" / NAME / "v2" / "model_card.json").read_text())
    note = next(r for r in card["gate"]["reasons"] if r.startswith("latency not compared"))
    assert "Another CPU model" in note and card["gate"]["latency_compared"] is False


def test_no_passing_variant_keeps_the_old_model_and_says_so(run_outputs, tmp_path):
    reg = tmp_path / "r"
    publish(run_outputs, reg, tmp_path / "o1")

    def nothing_verified(rep):
        for row in rep["rows"]:
            if row.get("status") == "ok":
                row["verification"].update(passed=False, reason="agreement 0.50 < 0.97")
        rep["choices"] = select.choose(rep["rows"], list(rep["choices"]))

    result = republish(run_outputs, reg, tmp_path / "o2", edited_report(run_outputs, tmp_path / "rep", nothing_verified))
    cpu = result["targets"]["cpu"]
    assert (cpu["decision"], cpu["blessed"], cpu["serving_version"]) == ("none", False, 1)
    assert "no variant passed" in cpu["reasons"][0] and "agreement 0.50 < 0.97" in cpu["reasons"][0]
    assert cpu["reasons"][1] == "v1 stays in service" and promoted_version(reg) == 1
    assert result["optimized"] == [] and not (models(reg) / "optimized_models" / NAME / "v2").exists()
    md = report.markdown({**run_outputs["report"], "publish": result})
    assert "## Publishing" in md and "- cpu: nothing to promote (no variant passed" in md


@pytest.mark.parametrize("damage, expected", [("invalid-json", "is not valid JSON"),
                                              ("edited", "does not match the sha256")])
def test_corrupted_promoted_card_refuses_promotion(run_outputs, tmp_path, capsys, damage, expected):
    reg = tmp_path / "r"
    publish(run_outputs, reg, tmp_path / "o1")
    card_path = models(reg) / "deployment_models" / "cpu" / NAME / "v1" / "model_card.json"
    if damage == "invalid-json":
        card_path.write_text('{"metrics": {"accuracy": ')
    else:  # a plausible edit that would make any candidate look better if the gate trusted it
        card = json.loads(card_path.read_text())
        card["metrics"]["accuracy"] = 0.1
        card_path.write_text(json.dumps(card))

    result = republish(run_outputs, reg, tmp_path / "o2")
    cpu, edge = result["targets"]["cpu"], result["targets"]["edge"]
    assert (cpu["decision"], cpu["blessed"]) == ("kept", False) and promoted_version(reg) == 1
    assert expected in cpu["reasons"][0] and "restore it" in cpu["reasons"][0]
    assert cpu["reasons"][-1] == "v1 stays in service"
    assert edge["decision"] == "promoted"  # one target's broken card does not block the others
    with pytest.raises(ArtifactError, match=expected):
        Registry(str(reg)).card(Registry(str(reg)).promoted("cpu", NAME))

    assert cli.main(["models", "show", NAME, "--registry", str(reg), "--target", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and str(card_path) in err


def test_unwritable_registry_is_a_clear_error_and_leaves_no_output(run_outputs, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="not writable") as err:
        publish(run_outputs, blocker / "registry", tmp_path / "out")
    assert "set publish.registry" in str(err.value) and str(blocker) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_publishing_switched_off_writes_nothing_to_the_registry(run_outputs, tmp_path):
    result = publish(run_outputs, tmp_path / "r", tmp_path / "out", enabled=False)
    assert result["version"] is None and not (tmp_path / "r").exists()
    assert {b["decision"] for b in result["targets"].values()} == {"off"}
    assert json.loads((tmp_path / "out" / "blessings" / "cpu.json").read_text())["blessed"] is False


# --- Triton layout ---------------------------------------------------------------------------------


def test_cpu_deployment_is_a_triton_onnx_repository_that_serves(run_outputs, tmp_path):
    import onnxruntime as ort

    from kfopt import formats

    result = publish(run_outputs, tmp_path / "r", tmp_path / "out")
    model_dir = Path(result["targets"]["cpu"]["triton"]) / NAME
    cfg = parse_triton_config((model_dir / "config.pbtxt").read_text())
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    assert (cfg.name, cfg.platform, cfg.instance_group[0].kind) == (NAME, "onnxruntime_onnx", KIND_CPU)
    assert cfg.max_batch_size == max(run_outputs["report"]["settings"]["batch_sizes"]) and inp.shape[0] != 1
    assert (cfg.input[0].name, list(cfg.input[0].dims), cfg.input[0].data_type) == (inp.name, inp.shape[1:], TYPE_FP32)
    assert (cfg.output[0].name, list(cfg.output[0].dims)) == (out.name, out.shape[1:])
    schema = json.loads((run_outputs["dataset"] / "schema.json").read_text())
    assert (model_dir / "labels.txt").read_text().split() == schema["class_names"]
    assert cfg.output[0].label_filename == "labels.txt"

    onnx_dir = run_outputs["root"] / "exports" / "onnx_fp32"
    x = np.load(run_outputs["dataset"] / "test.npz")["x"][:8].astype(np.float32)
    served = session.run(None, {cfg.input[0].name: x})[0]
    assert np.allclose(served, formats.load(onnx_dir).predict(x), atol=1e-6)
    card = json.loads((model_dir.parent.parent / "model_card.json").read_text())
    assert card["serving"]["triton"]["variant"] == "onnx_fp32"


def test_gpu_deployment_lays_out_a_real_tensorrt_engine(run_outputs, tmp_path):
    import tensorrt_rtx

    from kfopt.export import child_meta
    from kfopt.formats import tensorrt as trt_fmt

    src = run_outputs["root"] / "exports" / "onnx_fp32"
    engines = tmp_path / "engines"
    built = trt_fmt.build_engine(src / "model.onnx", engines / "trt_fp32", min_batch=1, opt_batch=4, max_batch=16,
                                 workspace_mb=64, module=tensorrt_rtx)
    assert built["engine_file"], built.get("build_error")
    meta = child_meta(variant.read(src), "trt_fp32", format="tensorrt", framework="tensorrt_rtx", target="gpu",
                      technique="tensorrt", params={"min_batch": 1, "opt_batch": 4, "max_batch": 16})
    variant.write(engines / "trt_fp32", meta)

    def measured_on_a_gpu(rep):
        row = dict(next(r for r in rep["rows"] if r["name"] == "onnx_fp32"), name="trt_fp32", format="tensorrt",
                   hardware="gpu", technique="tensorrt")
        rep["rows"].append(row)
        rep["environments"]["gpu"] = {**rep["environments"]["cpu"], "accelerator": "1 NVIDIA GPU(s)"}
        rep["choices"]["gpu"] = select.choose(rep["rows"], ["gpu"], {"gpu": "latency:1"})["gpu"]

    result = publish(run_outputs, tmp_path / "r", tmp_path / "out",
                     edited_report(run_outputs, tmp_path / "rep", measured_on_a_gpu), run_outputs["roots"] + [engines])
    gpu = result["targets"]["gpu"]
    assert (gpu["decision"], gpu["variant"]) == ("promoted", "trt_fp32")
    model_dir = Path(gpu["triton"]) / NAME
    cfg = parse_triton_config((model_dir / "config.pbtxt").read_text())
    assert (cfg.platform, cfg.max_batch_size, cfg.instance_group[0].kind) == ("tensorrt_plan", 16, KIND_GPU)
    assert cfg.HasField("dynamic_batching")
    assert (cfg.input[0].name, list(cfg.input[0].dims)) == (meta.input.name, meta.input.shape[1:])
    assert (model_dir / "1" / "model.plan").read_bytes() == (engines / "trt_fp32" / "model.engine").read_bytes()


def test_config_pbtxt_follows_the_kfopt_json_spec():
    spec = variant.TensorSpec
    fixed = variant.VariantMeta(name="x", format="onnx", precision="fp32", target="cpu",
                                input=spec("pixels", [1, None, 3]), output=spec("scores", [1, 5]))
    cfg = parse_triton_config(triton.config_pbtxt("m", fixed, 64, gpu=False))
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, -1, 3] and list(cfg.output[0].dims) == [1, 5]
    assert not cfg.HasField("dynamic_batching")
    with pytest.raises(ArtifactError, match="complex64"):
        triton.config_pbtxt("m", variant.VariantMeta(name="x", format="onnx", precision="fp32", target="cpu",
                                                     input=spec("a", [None, 2], "complex64"),
                                                     output=spec("b", [None, 2])), 8, gpu=False)
    tflite = variant.VariantMeta(name="t", format="tflite", precision="fp32", target="edge",
                                 input=spec("a", [None, 2]), output=spec("b", [None, 2]))
    with pytest.raises(ArtifactError, match="Triton's standard backends"):
        triton.config_pbtxt("m", tflite, 8, gpu=False)


# --- concurrency -----------------------------------------------------------------------------------


def test_only_one_of_many_simultaneous_claims_wins(tmp_path):
    barrier, wins = threading.Barrier(8), []

    def claimant(i):
        barrier.wait()
        wins.append(registry.claim(str(tmp_path / "v1"), {"token": f"t{i}"}))

    threads = [threading.Thread(target=claimant, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(wins) == [False] * 7 + [True]
    assert registry.owner(str(tmp_path / "v1"))["token"] in {f"t{i}" for i in range(8)}


def test_concurrent_publishers_get_distinct_whole_versions(run_outputs, tmp_path):
    reg = str(tmp_path / "r")
    check_no_interleaving(reg, concurrent_publish(run_outputs, tmp_path, reg, 4), 4)


# --- CLI, config, local runs, report ---------------------------------------------------------------


def test_models_list_and_show(run_outputs, tmp_path, capsys):
    reg = tmp_path / "r"
    publish(run_outputs, reg, tmp_path / "o1")

    def less_accurate(rep):
        for row in chosen_rows(rep):
            row["accuracy"] -= 0.05

    republish(run_outputs, reg, tmp_path / "o2", edited_report(run_outputs, tmp_path / "rep", less_accurate))
    chosen = run_outputs["report"]["choices"]["cpu"]["chosen"]
    capsys.readouterr()

    assert cli.main(["models", "list", "--registry", str(reg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Model registry: {reg}" and lines[1].split()[:2] == ["name", "versions"]
    row = next(line for line in lines if line.startswith(NAME))
    assert "v1, v2" in row and f"v1 {chosen}" in row  # v2 was kept out of cpu by the gate

    assert cli.main(["models", "show", NAME, "--registry", str(reg), "--target", "cpu"]) == 0
    shown = capsys.readouterr().out
    assert f"{NAME} v1 — cpu (in service, promotion 1)" in shown and f"variant    {chosen}:" in shown
    assert "triton     " in shown and "first promotion" in shown

    assert cli.main(["models", "show", NAME, "--registry", str(reg), "--version", "1", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert {c["version"] for c in cards} == {1} and "cpu" in {c["target"] for c in cards}

    assert cli.main(["models", "show", NAME, "--registry", str(reg), "--version", "2", "--target", "cpu"]) == 2
    assert "no model card for version v2 on cpu" in capsys.readouterr().err
    assert cli.main(["models", "show", "nope", "--registry", str(reg)]) == 2
    assert f"No model 'nope' in the registry {reg}; known: {NAME}" in capsys.readouterr().err


def test_publish_and_models_cli_need_no_tensorflow(run_outputs, tmp_path, repo):
    code = (
        "import sys\nfrom kfopt import cli, publish\n"
        f"publish.run({str(run_outputs['report_dir'])!r}, {[str(p) for p in run_outputs['roots']]!r}, "
        f"{str(tmp_path / 'r')!r}, 'digits', {str(tmp_path / 'out')!r})\n"
        f"cli.main(['models', 'list', '--registry', {str(tmp_path / 'r')!r}])\n"
        "print('TF', sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TF []" in proc.stdout and "digits" in proc.stdout


def test_config_validates_publish_settings():
    assert config.from_dict({"name": "my_model"}).publish.model_name == "my_model"
    with pytest.raises(ConfigError, match="latency_tolerance"):
        config.from_dict({"publish": {"latency_tolerance": -0.1}})
    with pytest.raises(ConfigError, match="cannot name a registry folder"):
        config.from_dict({"publish": {"model_name": "../escape"}})


def test_local_runs_pass_an_absolute_registry(tmp_path, monkeypatch):
    cfg = config.load("digits_cnn")
    monkeypatch.chdir(tmp_path)
    assert local_run.with_registry(cfg, Path("runs")).publish.registry == str(tmp_path / "runs" / "registry")
    cfg.publish.registry = "shared/reg"
    assert local_run.with_registry(cfg, Path("runs")).publish.registry == str(tmp_path / "shared" / "reg")
    cfg.publish.registry = "gs://bucket/reg"
    assert local_run.with_registry(cfg, Path("runs")).publish.registry == "gs://bucket/reg"


def test_local_run_puts_the_gate_outcome_beside_and_into_the_report(run_outputs, tmp_path):
    run_dir = tmp_path / "run"
    task_out = run_dir / "pipeline" / "kfopt-2026-01-01-00-00-00-000000" / "publish" / "blessings"
    result = publish(run_outputs, tmp_path / "r", task_out)  # where kfp.local puts the publish task's output
    run_dir.joinpath("report.json").write_text(json.dumps(run_outputs["report"]))
    run_dir.joinpath("pipeline.log").write_text(  # kfp.local's own lines, colours and all
        "23:59:58.500 - INFO - Executing task \x1b[96m'train'\x1b[0m\n"
        "00:00:10.000 - INFO - Task \x1b[96m'train'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
        "Task 'preprocess' cache hit: its outputs from an earlier run are reused\n")
    local_run._add_after_run(run_dir)
    assert json.loads((run_dir / "publish.json").read_text()) == result
    written = json.loads((run_dir / "report.json").read_text())
    assert written["publish"] == result
    assert written["stage_times"] == [{"stage": "train", "seconds": 11.5, "status": "success"},
                                      {"stage": "preprocess", "seconds": None, "status": "cached"}]
    md = (run_dir / "report.md").read_text()
    assert "## Publishing" in md and "## Time per stage" in md and "| train | 11.5 | 100% |" in md
    assert "<h2>Publishing</h2>" in (run_dir / "report.html").read_text()
    assert "Time per stage (slowest first, 12 s in 1 stage, 1 from the cache): train 11.5 s" in \
        report.text_table(written)


def test_a_cluster_run_without_a_registry_uses_its_pipeline_roots_bucket():
    uri = "gs://my-project-kfopt/pipeline-root/kfopt-123/publish-4/blessings"
    assert publish_mod.default_registry(uri) == "gs://my-project-kfopt/registry"
    assert publish_mod.default_registry("/tmp/runs/x/publish/blessings") == ""  # then run() refuses clearly


def test_empty_registry_is_refused_before_anything_is_written(run_outputs, tmp_path):
    with pytest.raises(ConfigError, match="No model registry is set"):
        publish_mod.run(run_outputs["report_dir"], run_outputs["roots"], "", NAME, tmp_path / "out")
    assert not (tmp_path / "out").exists()
