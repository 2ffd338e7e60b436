"""A golden snapshot of the *whole* compiled pipeline: tasks, edges, parameters, placement.

What changes with every edit is normalized away — the code-version hash in each task's cache key and
the component source KFP embeds (it is made from the stage table, whose shape the snapshot already
shows as each component's inputs and outputs) — so a diff of the golden file reads as a change of
structure. Rewrite with KFOPT_UPDATE_GOLDEN=1 after a deliberate change and review the diff.
"""

import pytest
import yaml
from kfp import compiler

from kfopt import deployment
from pipelines.kfopt_pipeline import build
from test_placement import check_golden


def structure(path) -> list:
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    spec.pop("sdkVersion", None)
    for task in spec["root"]["dag"]["tasks"].values():
        task["inputs"]["parameters"]["code_version"] = "<kfopt version+code hash>"
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        program = container.pop("command")[-1]
        assert "execute(" in program, f"{name}: a component body is one call into kfopt"
        container["command"] = f"<component source: {name.removeprefix('exec-')}>"
    return docs


@pytest.mark.parametrize("name", ["gke", "cpu-only"])
def test_whole_pipeline_matches_golden(name, tmp_path):
    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build(deployment.load(name)), str(out))
    check_golden(f"pipeline_{name.replace('-', '_')}.yaml", structure(out))
