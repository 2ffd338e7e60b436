"""pipelines.placement: a tiny pipeline compiled with kfp puts each stage on its node pool.

The golden snapshots in tests/golden/ hold only what placement sets (image, resources, accelerator,
retry policy, node selectors, tolerations) per task, so they change when placement changes, not when
kfp reformats the component code. Rewrite them with KFOPT_UPDATE_GOLDEN=1 after a deliberate change.
"""

import os
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl

from kfopt import deployment
from pipelines import placement

GOLDEN = Path(__file__).parent / "golden"
STAGES = ("train", "tensorrt", "xla", "benchmark_gpu")


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def step(x: int) -> int:
    return x + 1


def compile_tiny(dep: deployment.Deployment, tmp_path: Path) -> tuple[str, list[dict]]:
    """Compile one task per stage in STAGES; return the YAML text and its documents."""

    @dsl.pipeline(name="tiny-placement")
    def tiny(x: int = 1):
        for stage in STAGES:
            task = step(x=x).set_display_name(stage)
            assert placement.apply(task, stage, dep) is task

    path = tmp_path / "tiny.yaml"
    compiler.Compiler().compile(tiny, str(path))
    text = path.read_text()
    return text, list(yaml.safe_load_all(text))


def placement_of(docs: list[dict]) -> dict:
    """Per stage: what the compiled spec says about where and how its task runs."""
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
    result = {}
    for task in spec["root"]["dag"]["tasks"].values():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        result[task["taskInfo"]["name"]] = {
            "image": container["image"],
            "resources": container.get("resources"),
            "retryPolicy": task.get("retryPolicy"),
            "kubernetes": k8s.get("executors", {}).get(executor),
        }
    return result


def check_golden(name: str, actual: dict) -> None:
    path = GOLDEN / name
    if os.environ.get("KFOPT_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(actual, sort_keys=True))
    if not path.exists():
        pytest.fail(f"Golden file {path} is missing; run with KFOPT_UPDATE_GOLDEN=1 to write it.")
    assert actual == yaml.safe_load(path.read_text()), (
        f"Placement differs from {path}; if the change is intended, rerun with "
        "KFOPT_UPDATE_GOLDEN=1 and review the diff.")


def test_gke_matches_golden(tmp_path):
    _, docs = compile_tiny(deployment.load("gke"), tmp_path)
    check_golden("placement_gke.yaml", placement_of(docs))


def test_cpu_only_matches_golden(tmp_path):
    _, docs = compile_tiny(deployment.load("cpu-only"), tmp_path)
    check_golden("placement_cpu_only.yaml", placement_of(docs))


def test_gke_gpu_and_tpu_tasks_get_accelerator_selectors_tolerations_and_retry(tmp_path):
    _, docs = compile_tiny(deployment.load("gke"), tmp_path)
    placed = placement_of(docs)
    gpu = placed["tensorrt"]
    assert gpu["image"].endswith("/kfopt-gpu:0.1.0")
    assert gpu["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert gpu["resources"]["accelerator"]["resourceCount"] == "1"
    assert gpu["kubernetes"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert gpu["kubernetes"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert gpu["retryPolicy"] == {"maxRetryCount": 3, "backoffDuration": "60s",
                                  "backoffFactor": 2.0, "backoffMaxDuration": "7200s"}
    tpu = placed["xla"]
    assert tpu["resources"]["accelerator"]["resourceType"] == "google.com/tpu"
    assert tpu["resources"]["accelerator"]["resourceCount"] == "4"
    assert tpu["kubernetes"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2"}
    assert tpu["kubernetes"]["tolerations"][0]["key"] == "google.com/tpu"
    train = placed["train"]
    assert "accelerator" not in train["resources"]
    assert set(train["kubernetes"]) == {"securityContext", "emptyDirMounts"}, "no selector or toleration"
    assert train["retryPolicy"] is None
    assert train["resources"]["resourceMemoryLimit"] == "16Gi"


def test_cpu_only_compiles_without_any_accelerator_or_selector(tmp_path):
    text, docs = compile_tiny(deployment.load("cpu-only"), tmp_path)
    assert "accelerator" not in text
    assert "nodeSelector" not in text and "tolerations" not in text
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {key for spec in k8s.values() for key in spec} == {"securityContext", "emptyDirMounts"}
    images = {p["image"] for p in placement_of(docs).values()}
    assert images == {"us-docker.pkg.dev/my-project/kfopt/kfopt-cpu:0.1.0"}


@pytest.mark.parametrize("name, keep_root, artifact_dir", [("gke", True, "/gcs"), ("cpu-only", False, "/minio")])
def test_every_task_runs_as_the_images_non_root_user_with_writable_tmp(tmp_path, name, keep_root, artifact_dir):
    """runAsNonRoot + the images' uid on every task; /tmp and the launcher's artifact folder as
    emptyDirs, because a non-root process cannot create /gcs (or /minio, KFP's default root) on the
    image's root filesystem."""
    raw = yaml.safe_load((deployment.deployment_dir() / f"{name}.yaml").read_text())
    if not keep_root:
        raw.pop("pipeline_root")
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    dep = deployment.load(str(tmp_path / f"{name}.yaml"))
    _, docs = compile_tiny(dep, tmp_path)
    for stage, placed in placement_of(docs).items():
        k8s = placed["kubernetes"]
        assert k8s["securityContext"] == {"runAsUser": str(placement.RUN_AS_UID),
                                          "runAsGroup": str(placement.RUN_AS_UID), "runAsNonRoot": True}, stage
        assert {m["mountPath"] for m in k8s["emptyDirMounts"]} == {"/tmp", artifact_dir}, stage


def test_the_task_uid_is_the_uid_every_image_runs_as(repo):
    for dockerfile in sorted((repo / "images").glob("*/Dockerfile")):
        users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
        assert users[-1] == f"{placement.RUN_AS_UID}:{placement.RUN_AS_UID}", dockerfile
