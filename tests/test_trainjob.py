"""The train stage on Kubeflow Trainer (`train.engine: trainjob`) against a recording stand-in for the Kubernetes API.

No Kubernetes cluster (and so no Kubeflow Trainer) exists here, so `TrainerStandIn` is an HTTP server on
127.0.0.1 that speaks the endpoints kfopt.trainjob uses through the real `kubernetes` client: discovery of
trainer.kubeflow.org/v1alpha1, create/get of TrainJobs, and list/log of the job's pods. Its "controller"
does what Trainer's torch runtime does with a TrainJob, as far as one machine can: it starts `numNodes`
real processes running the TrainJob's own command and args with the PET_* variables Trainer injects
(PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT), keeps each one's output as that node
pod's log, and sets the Complete or Failed condition from their exit codes. Everything else is real:
kfopt's entry point trains with DDP (gloo), reads the dataset from and writes the baseline to a real
GCS-protocol server (gcp-storage-emulator), and the rendered TrainJob is validated against the pinned,
trimmed TrainJob CRD schema (tests/schemas/trainer-trainjob-v1alpha1.json).
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from test_manifests import validate_with_schema

from kfopt import deployment, storage, trainjob, variant
from kfopt.errors import ConfigError, ModelError
from kfopt.models import torch_train

SCHEMA = Path(__file__).parent / "schemas" / "trainer-trainjob-v1alpha1.json"
BASE = "/apis/trainer.kubeflow.org/v1alpha1"
TRAIN = dict(architecture="digits_cnn", epochs=2, batch_size=32, learning_rate=2e-3, patience=0, seed=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TrainerStandIn:
    """Records every request; `trainer=False`: the CRD is not installed; `run_jobs=False`: jobs never finish."""

    def __init__(self, trainer: bool = True, run_jobs: bool = True):
        self.trainer, self.run_jobs = trainer, run_jobs
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[str, dict] = {}  # pod name → {"node", "phase", "log", "job"}
        self.requests: list[tuple[str, str, dict | None]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stand_in.requests.append((self.command, self.path, body))
                code, answer = stand_in.answer(self.command, self.path, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def not_found(message: str) -> tuple[int, dict]:
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                     "message": message, "code": 404}

    def _run(self, key: tuple[str, str], job: dict) -> None:
        """Trainer's part: numNodes processes of the trainer's command with the PET_* rendezvous."""
        trainer, port = job["spec"]["trainer"], _free_port()
        cmd = [sys.executable if trainer["command"][0] == "python" else trainer["command"][0],
               *trainer["command"][1:], *trainer["args"]]
        nodes = []
        for rank in range(trainer["numNodes"]):
            env = {**os.environ, "PET_NNODES": str(trainer["numNodes"]), "PET_NODE_RANK": str(rank),
                   "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
            nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        failed = False
        for rank, proc in enumerate(nodes):
            log, _ = proc.communicate(timeout=300)
            phase = "Succeeded" if proc.returncode == 0 else "Failed"
            failed |= phase == "Failed"
            self.pods[f"{key[1]}-node-0-{rank}"] = {"node": rank, "phase": phase, "log": log, "job": key[1]}
        condition = {"type": "Failed" if failed else "Complete", "status": "True", "reason": "JobFailed" if failed
                     else "JobsCompleted", "message": "jobset failed" if failed else "jobset completed",
                     "lastTransitionTime": "2026-12-01T00:00:00Z"}
        self.jobs[key]["status"] = {"conditions": [condition]}

    def answer(self, method: str, path: str, body: dict | None):
        route, _, query = path.partition("?")
        if route.startswith("/api/v1/"):
            return self._pods(route, query)
        if not self.trainer:
            return self.not_found("the server could not find the requested resource")
        if method == "GET" and route == BASE:
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "trainer.kubeflow.org/v1alpha1",
                         "resources": [{"name": "trainjobs", "singularName": "trainjob", "namespaced": True,
                                        "kind": "TrainJob", "verbs": ["create", "get", "list", "watch", "delete"]}]}
        parts = route.removeprefix(BASE + "/").split("/")  # namespaces/<ns>/trainjobs[/<name>]
        key = (parts[1], parts[3] if len(parts) > 3 else body["metadata"]["name"])
        if method == "POST":
            self.jobs[key] = {**body, "status": {}}
            if self.run_jobs:
                threading.Thread(target=self._run, args=(key, body), daemon=True).start()
            return 201, body
        if key not in self.jobs:
            return self.not_found(f'trainjobs.trainer.kubeflow.org "{key[1]}" not found')
        return 200, self.jobs[key]

    def _pods(self, route: str, query: str):
        if route.endswith("/log"):
            pod = self.pods[route.split("/")[-2]]
            lines = pod["log"].splitlines()[-int(query.split("tailLines=")[1].split("&")[0]):]
            return 200, "\n".join(lines)
        items = [{"metadata": {"name": name, "labels": {trainjob.JOBSET_LABEL: p["job"],
                                                        trainjob.INDEX_LABEL: str(p["node"])}},
                  "status": {"phase": p["phase"]}} for name, p in self.pods.items()]
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def client(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(cfg)

    def posted(self) -> list[dict]:
        return [b for m, _, b in self.requests if m == "POST"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube():
    made = []

    def make(**kwargs) -> TrainerStandIn:
        made.append(TrainerStandIn(**kwargs))
        return made[-1]

    yield make
    for stand_in in made:
        stand_in.close()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from kfopt.data import preprocess

    root = tmp_path_factory.mktemp("trainjob")
    preprocess.run("digits", root / "dataset", limit=300, seed=3)
    return root / "dataset"


@pytest.fixture
def placed(gcs, dataset_dir):
    """The shipped GKE deployment with its pipeline_root on the test's bucket, and the dataset uploaded there."""
    storage.upload_dir(dataset_dir, gcs.uri("root/augment/dataset"))
    return dataclasses.replace(deployment.load("gke"), pipeline_root=gcs.uri("root")), gcs.uri("root/augment/dataset")


def _train(placement, dataset, out, stand_in, timeout_s=240.0):
    return trainjob.run(dataset, out, workers=2, placement=placement, namespace="kfopt", timeout_s=timeout_s,
                        api_client=stand_in.client(), poll_s=0.2, run_id="t1", **TRAIN)


def test_rendered_trainjob_matches_the_crd_schema_and_the_gpu_pool(tmp_path):
    placement = deployment.load("gke")
    manifest = trainjob.render("kfopt-train-x", "kfopt", workers=3, args=["--dataset", "gs://b/d"],
                               placement=placement)
    (tmp_path / "trainjob.yaml").write_text(yaml.safe_dump(manifest))
    done = validate_with_schema(tmp_path / "trainjob.yaml", SCHEMA)
    assert done.returncode == 0, done.stderr
    spec = manifest["spec"]
    assert spec["runtimeRef"]["name"] == "torch-distributed" and spec["trainer"]["numNodes"] == 3
    assert spec["trainer"]["command"] == ["python", "-m", "kfopt.models.torch_ddp"]
    assert spec["trainer"]["image"] == placement.pools["gpu"].image
    assert spec["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == placement.service_account
    manifest["spec"]["trainer"]["numNodez"] = 3  # the schema is strict enough to catch a misspelt key
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(manifest))
    assert validate_with_schema(tmp_path / "bad.yaml", SCHEMA).returncode != 0


def test_trainjob_trains_on_two_nodes_and_the_baseline_is_collected(placed, tmp_path, kube):
    placement, dataset = placed
    stand_in = kube()
    metrics = _train(placement, dataset, tmp_path / "baseline", stand_in)
    (body,) = stand_in.posted()
    assert body["metadata"] == {"name": "kfopt-train-t1", "namespace": "kfopt",
                                "labels": {"app.kubernetes.io/managed-by": "kfopt"}}
    assert body["spec"]["trainer"]["args"][:2] == ["--dataset", dataset]
    assert metrics["workers"] == 2 and len(metrics["history"]["loss"]) == TRAIN["epochs"]
    meta = variant.read(tmp_path / "baseline")
    assert meta.params["workers"] == 2 and meta.extra["test_accuracy"] == metrics["test_accuracy"]
    assert metrics["test_accuracy"] > 0.3, "two epochs on 300 digits should be far above the 10 % of chance"


def test_a_failed_node_fails_the_stage_with_its_log_tail(placed, tmp_path, kube):
    placement, dataset = placed
    storage.write_bytes(dataset + "/train.npz", b"corrupt")  # the nodes download a damaged split
    with pytest.raises(ModelError, match=r"TrainJob kfopt/kfopt-train-t1 failed \(JobFailed.*node [01] \(pod "
                                         r"kfopt-train-t1-node-0-[01]\): .*kfopt: error:"):
        _train(placement, dataset, tmp_path / "baseline", kube())
    assert not (tmp_path / "baseline").exists()


def test_a_job_that_never_finishes_times_out(placed, tmp_path, kube):
    placement, dataset = placed
    with pytest.raises(ModelError, match="did not complete within 0.5 s.*train.timeout_s"):
        _train(placement, dataset, tmp_path / "baseline", kube(run_jobs=False), timeout_s=0.5)


def test_a_cluster_without_trainer_names_the_crd(placed, tmp_path, kube):
    placement, dataset = placed
    stand_in = kube(trainer=False)
    with pytest.raises(ConfigError, match=r"CRD trainjobs\.trainer\.kubeflow\.org .*missing; install Kubeflow "
                                          r"Trainer v2"):
        _train(placement, dataset, tmp_path / "baseline", stand_in)
    assert not stand_in.posted()


def test_bad_placement_and_local_data_are_refused(tmp_path, dataset_dir):
    cpu_only = deployment.load("cpu-only")
    with pytest.raises(ConfigError, match="no 'gpu' node pool"):
        trainjob.render("x", "kfopt", workers=2, args=[], placement=cpu_only)
    with pytest.raises(ConfigError, match="dataset artifact in object storage"):
        trainjob.gcs_uri(dataset_dir)
    assert trainjob.gcs_uri("/gcs/bucket/root/ds") == "gs://bucket/root/ds"
    with pytest.raises(ConfigError, match="needs the deployment file"):
        torch_train.run(dataset_dir, tmp_path / "o", workers=2, engine="trainjob", **TRAIN)
