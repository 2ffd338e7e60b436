"""kfopt.deployment: the shipped deployment files load, and every kind of mistake fails clearly."""

import copy
import math
from pathlib import Path

import pytest
import yaml

from kfopt import deployment
from kfopt.errors import ConfigError

GKE = yaml.safe_load((deployment.DEPLOYMENT_DIR / "gke.yaml").read_text())


def load_changed(tmp_path: Path, change) -> deployment.Deployment:
    """Load a copy of gke.yaml after `change(doc)` edits it in place."""
    doc = copy.deepcopy(GKE)
    change(doc)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(doc))
    return deployment.load(str(path))


def test_shipped_deployments_are_gke_and_cpu_only():
    assert {"gke", "cpu-only"} <= set(deployment.available())


def test_gke_places_accelerator_stages_on_their_pools():
    gke = deployment.load("gke")
    assert gke.pool_for("tensorrt").name == "gpu"
    assert gke.pool_for("benchmark_gpu").name == "gpu"
    assert gke.pool_for("xla").name == "tpu"
    assert gke.pool_for("benchmark_tpu").name == "tpu"
    others = set(deployment.STAGES) - {"tensorrt", "benchmark_gpu", "xla", "benchmark_tpu"}
    assert {gke.pool_for(stage).name for stage in others} == {"cpu"}
    gpu, tpu = gke.pools["gpu"], gke.pools["tpu"]
    assert gpu.accelerator == deployment.Accelerator("nvidia.com/gpu", 1)
    assert gpu.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert gpu.tolerations == (deployment.Toleration("nvidia.com/gpu", "Exists", "NoSchedule"),)
    assert tpu.accelerator == deployment.Accelerator("google.com/tpu", 4)
    assert tpu.node_selector == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                 "cloud.google.com/gke-tpu-topology": "2x2"}
    assert gpu.retry and gpu.retry.count >= 1 and tpu.retry and tpu.retry.count >= 1
    assert gke.image("gpu") == "us-docker.pkg.dev/my-project/kfopt/kfopt-gpu:0.1.0"
    assert gke.has_accelerators


def test_every_stage_has_requests_and_limits():
    for name in deployment.available():
        loaded = deployment.load(name)
        for stage in deployment.STAGES:
            resources = loaded.resources_for(stage)
            assert all(vars(resources).values()), (name, stage)


def test_cpu_only_has_no_accelerator_anywhere():
    cpu_only = deployment.load("cpu-only")
    assert set(cpu_only.pools) == {"cpu"}
    assert not cpu_only.has_accelerators
    assert cpu_only.pool_for("tensorrt").accelerator is None
    assert cpu_only.pool_for("xla").image.endswith("/kfopt-cpu:0.1.0")


def test_load_accepts_a_path():
    path = deployment.DEPLOYMENT_DIR / "gke.yaml"
    assert deployment.load(str(path)).name == "gke"


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="Unknown deployment 'gkee'; use one of: .*gke"):
        deployment.load("gkee")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        deployment.load(str(tmp_path / "nope.yaml"))


def test_unknown_stage_and_pool_lookups_name_the_valid_ones():
    gke = deployment.load("gke")
    with pytest.raises(ConfigError, match="Stage 'trian' is not placed.*train"):
        gke.pool_for("trian")
    with pytest.raises(ConfigError, match="Node pool 'fpga' is not defined.*cpu, gpu, tpu"):
        gke.image("fpga")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["pools"]["gpu"].update(acelerator={}),
     r"'pools.gpu.acelerator' is an unknown key; use one of: .*accelerator"),
    (lambda d: d.update(extra=1), r"'extra' is an unknown key"),
    (lambda d: d["stages"].update(trian={"pool": "cpu", "resources": "small"}),
     r"'stages.trian' is an unknown key"),
    (lambda d: (d["stages"].pop("publish"), d["resources"].pop("medium")),
     r"names unknown resource profile 'medium'"),
    (lambda d: d.update(tag=1), r"'tag' must be of type str, not int"),
    (lambda d: d["pools"]["gpu"]["accelerator"].update(count="1"),
     r"'pools.gpu.accelerator.count' must be of type int, not str"),
    (lambda d: d["pools"]["gpu"]["accelerator"].update(count=True),
     r"'pools.gpu.accelerator.count' must be of type int, not bool"),
    (lambda d: d["stages"]["tensorrt"].update(pool="gpus"),
     r"'stages.tensorrt.pool' names unknown node pool 'gpus'; use one of: cpu, gpu, tpu"),
    (lambda d: d["stages"]["train"].update(resources="huge"),
     r"'stages.train.resources' names unknown resource profile 'huge'"),
    (lambda d: d["pools"]["cpu"].update(image="{registry}/kfopt-cpu"),
     r"'pools.cpu.image' \(us-docker.pkg.dev/my-project/kfopt/kfopt-cpu\) has no tag or digest"),
    (lambda d: d["pools"]["cpu"].update(image="localhost:5000/kfopt-cpu"),
     r"has no tag or digest"),
    (lambda d: d.update(tag="latest"), r"'pools.cpu.image' .* uses the moving tag 'latest'"),
    (lambda d: d["pools"]["cpu"].update(image="{registry}/kfopt-cpu:{version}"),
     r"may only use the placeholders"),
    (lambda d: d["pools"]["tpu"]["node_selector"].update(
        {"cloud.google.com/gke-tpu-topology": "4x4"}),
     r"\(4x4\) is not a single-host topology of tpu-v5-lite-podslice; use one of: 1x1, 2x2, 2x4"),
    (lambda d: d["pools"]["tpu"]["node_selector"].update(
        {"cloud.google.com/gke-tpu-accelerator": "tpu-v4-podslice"}),
     r"\(2x2\) is not a single-host topology of tpu-v4-podslice; use one of: 2x2x1"),
    (lambda d: d["pools"]["tpu"]["node_selector"].update(
        {"cloud.google.com/gke-tpu-accelerator": "tpu-v9"}),
     r"\(tpu-v9\) is not a known GKE TPU accelerator"),
    (lambda d: d["pools"]["tpu"]["node_selector"].pop("cloud.google.com/gke-tpu-topology"),
     r"'pools.tpu.node_selector.cloud.google.com/gke-tpu-topology' is missing"),
    (lambda d: d["pools"]["tpu"]["accelerator"].update(count=8),
     r"'pools.tpu.accelerator.count' is 8 but topology 2x2 has 4 chips; set it to 4"),
    (lambda d: d["pools"]["gpu"]["accelerator"].update(count=0),
     r"'pools.gpu.accelerator.count' is 0; use at least 1"),
    (lambda d: d["pools"]["gpu"]["tolerations"][0].update(effect="NoScheduling"),
     r"'pools.gpu.tolerations\[0\].effect' \(NoScheduling\) must be NoSchedule"),
    (lambda d: d["pools"]["gpu"]["retry"].update(backoff="60"),
     r"'pools.gpu.retry.backoff' \(60\) must be a duration"),
    (lambda d: d["resources"]["small"].update(cpu_request="2"),
     r"'resources.small.cpu_request' is above cpu_limit"),
    (lambda d: d["resources"]["small"].update(memory_request="2G", memory_limit="1Gi"),
     r"'resources.small.memory_request' is above memory_limit"),
    (lambda d: d["resources"]["small"].update(memory_limit="1GB"),
     r"'resources.small.memory_limit' \(1GB\) is not a Kubernetes quantity"),
    (lambda d: d["pools"].pop("cpu"), r"'pools.cpu' is missing; every deployment needs a cpu pool"),
    (lambda d: d.update(pipeline_root="bucket/root"), r"'pipeline_root' \(bucket/root\) must be"),
])
def test_mistakes_fail_with_the_key_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_changed(tmp_path, change)
    assert str(caught.value).startswith("changed.yaml: ")


def test_registry_port_is_not_mistaken_for_a_tag(tmp_path):
    changed = load_changed(tmp_path, lambda d: d.update(registry="localhost:5000"))
    assert changed.image("cpu") == "localhost:5000/kfopt-cpu:0.1.0"


def test_digest_pins_are_accepted(tmp_path):
    digest = "localhost:5000/kfopt-cpu@sha256:" + "0" * 64
    changed = load_changed(tmp_path, lambda d: d["pools"]["cpu"].update(image=digest))
    assert changed.image("cpu") == digest


def test_invalid_yaml_is_reported(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("pools: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        deployment.load(str(path))


def test_every_single_host_topology_in_the_table_is_accepted(tmp_path):
    for accelerator, topologies in deployment.TPU_SINGLE_HOST_TOPOLOGIES.items():
        for topology in topologies:
            chips = math.prod(int(side) for side in topology.split("x"))

            def change(doc, accelerator=accelerator, topology=topology, chips=chips):
                doc["pools"]["tpu"]["node_selector"] = {
                    deployment.TPU_ACCELERATOR_LABEL: accelerator,
                    deployment.TPU_TOPOLOGY_LABEL: topology}
                doc["pools"]["tpu"]["accelerator"]["count"] = chips

            assert load_changed(tmp_path, change).pools["tpu"].accelerator.count == chips


def test_names_resolve_in_kfopt_deployment_dir_when_set(tmp_path, monkeypatch):
    (tmp_path / "site.yaml").write_text((deployment.DEPLOYMENT_DIR / "cpu-only.yaml").read_text())
    monkeypatch.setenv("KFOPT_DEPLOYMENT_DIR", str(tmp_path))
    assert deployment.available() == ["site"]
    assert deployment.load("site").source == tmp_path / "site.yaml"
    with pytest.raises(ConfigError, match="Unknown deployment 'gke'; use one of: site"):
        deployment.load("gke")


def test_a_stage_the_file_does_not_place_runs_where_its_row_says(tmp_path):
    """A new stage needs no edit of every deployment file: it takes its row's pool and profile."""
    raw = yaml.safe_load((deployment.DEPLOYMENT_DIR / "gke.yaml").read_text())
    raw["stages"].pop("quantize")
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(raw))
    dep = deployment.load(str(path))
    assert dep.stage("quantize").pool == "cpu"
    assert dep.resources_for("quantize") == dep.resources_for("export")  # both "medium"
