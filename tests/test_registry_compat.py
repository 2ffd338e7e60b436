"""A registry written by the previous release (tests/fixtures/registry_v1) still reads and still gates."""

import json
import shutil
from pathlib import Path

from kfopt import publish
from kfopt.cli import main
from kfopt.registry import Registry
from publish_inputs import retrained_roots, run_outputs  # noqa: F401 (run_outputs: fixture)

OLD = Path(__file__).parent / "fixtures" / "registry_v1"
NAME = "digits_cnn"


def test_previous_release_registry_reads(tmp_path, capsys):
    reg = tmp_path / "registry"
    shutil.copytree(OLD, reg)
    assert Registry(str(reg)).versions(NAME) == [1]
    assert main(["models", "show", NAME, "--registry", str(reg)]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "tflite_dynamic" in out


def test_a_new_run_is_gated_against_the_previous_release_promotion(run_outputs, tmp_path):
    reg = tmp_path / "registry"
    shutil.copytree(OLD, reg)
    old_card = json.loads((reg / "models/deployment_models/cpu" / NAME / "v1/model_card.json").read_text())
    assert old_card["variant"]["framework"] == "litert"  # schema 1: the runtime in `framework`
    roots = retrained_roots(run_outputs, tmp_path / "roots", "after the upgrade")
    result = publish.run(run_outputs["report_dir"], roots, str(reg), NAME, tmp_path / "out",
                         dataset_dir=run_outputs["dataset"])
    assert result["version"] == 2
    cpu = result["targets"]["cpu"]
    assert "first promotion" not in cpu["decision"], cpu  # compared with the old release's v1
    assert "v1" in json.dumps(cpu)
    assert Registry(str(reg)).versions(NAME) == [1, 2]
