"""The train stage on Kubeflow Trainer (`train.engine: trainjob`) against a recording stand-in for the Kubernetes API.

No Kubernetes cluster (and so no Kubeflow Trainer) exists here, so `TrainerStandIn` is an HTTP server on
127.0.0.1 that speaks the endpoints kfopt.trainjob uses through the real `kubernetes` client: discovery of
trainer.kubeflow.org/v1alpha1, get of a ClusterTrainingRuntime, create/get of TrainJobs, and list/log of
the job's pods. Its "controller" does what Trainer does with a TrainJob, as far as one machine can: it
starts `numNodes` real processes running the TrainJob's own command and args, keeps each one's output as
that node pod's log, and sets the Complete or Failed condition from their exit codes. On the
torch-distributed runtime the nodes get the PET_* variables Trainer injects (PET_NNODES, PET_NODE_RANK,
PET_MASTER_ADDR, PET_MASTER_PORT). On kfopt's kfopt-tensorflow-distributed runtime they get that
runtime's env as the kubelet would resolve it from manifests/trainer/ (literal values, the downward-API
completion index and JobSet name) plus the TrainJob's env; one machine has no JobSet DNS, so the stand-in
also plays DNS: it passes TF_CONFIG built by kfopt's own `trainer_tf_config` from that env, with each
node's `<jobset>-node-0-<i>.<jobset>:2222` mapped to its own 127.0.0.1 port. Everything else is real:
kfopt's entry points train with DDP (gloo) or MultiWorkerMirroredStrategy, read the dataset from and
write the baseline to a real GCS-protocol server (gcp-storage-emulator), and the rendered TrainJobs are
validated against the pinned, trimmed TrainJob CRD schema (tests/schemas/trainer-trainjob-v1alpha1.json).
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
from kfopt.models import keras_mwms, torch_train, train

SCHEMA = Path(__file__).parent / "schemas" / "trainer-trainjob-v1alpha1.json"
TF_RUNTIME = Path(__file__).resolve().parent.parent / "manifests" / "trainer" / "tensorflow-distributed.yaml"
BASE = "/apis/trainer.kubeflow.org/v1alpha1"
TRAIN = dict(architecture="digits_cnn", epochs=2, batch_size=32, learning_rate=2e-3, patience=0, seed=1)
RUNTIMES = tuple(r.name for r in trainjob.RUNTIMES.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runtime_env(job: dict, index: int) -> dict[str, str]:
    """What the kubelet gives node `index` of `job` on kfopt's TensorFlow runtime: the runtime's env
    (literals; the downward-API completion index and JobSet name, which Trainer names after the TrainJob)
    and the TrainJob's own env, which Trainer upserts into container `node`."""
    runtime = yaml.safe_load(TF_RUNTIME.read_text())
    (container,) = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"][
        "spec"]["containers"]
    fields = {"metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index),
              f"metadata.labels['{trainjob.JOBSET_LABEL}']": job["metadata"]["name"]}
    env = {e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
           for e in container["env"]}
    return {**env, **{e["name"]: e["value"] for e in job["spec"]["trainer"].get("env", [])}}


class TrainerStandIn:
    """Records every request; `trainer=False`: the CRD is not installed; `run_jobs=False`: jobs never finish;
    `runtimes`: the ClusterTrainingRuntimes installed; `runtime_access=False`: reading them is forbidden."""

    def __init__(self, trainer: bool = True, run_jobs: bool = True, runtimes: tuple[str, ...] = RUNTIMES,
                 runtime_access: bool = True):
        self.trainer, self.run_jobs, self.runtimes, self.runtime_access = trainer, run_jobs, runtimes, runtime_access
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

    @staticmethod
    def node_env(job: dict, rank: int, ports: list[int]) -> dict[str, str]:
        """Node `rank`'s environment on the job's runtime (torch: Trainer's PET_*; Keras: see runtime_env)."""
        trainer = job["spec"]["trainer"]
        if job["spec"]["runtimeRef"]["name"] == "torch-distributed":
            return {"PET_NNODES": str(trainer["numNodes"]), "PET_NODE_RANK": str(rank),
                    "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(ports[0])}
        env = runtime_env(job, rank)
        tf_config = json.loads(keras_mwms.trainer_tf_config(env))
        tf_config["cluster"]["worker"] = [f"127.0.0.1:{p}" for p in ports]  # the stand-in's "DNS"
        return {**env, "TF_CONFIG": json.dumps(tf_config)}

    def _run(self, key: tuple[str, str], job: dict) -> None:
        """Trainer's part: numNodes processes of the trainer's command with the runtime's rendezvous env."""
        trainer = job["spec"]["trainer"]
        ports = [_free_port() for _ in range(trainer["numNodes"])]
        cmd = [sys.executable if trainer["command"][0] == "python" else trainer["command"][0],
               *trainer["command"][1:], *trainer["args"]]
        nodes = []
        for rank in range(trainer["numNodes"]):
            env = {**os.environ, **self.node_env(job, rank, ports), "OMP_NUM_THREADS": "1"}
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
                                        "kind": "TrainJob", "verbs": ["create", "get", "list", "watch", "delete"]},
                                       {"name": "clustertrainingruntimes", "singularName": "clustertrainingruntime",
                                        "namespaced": False, "kind": "ClusterTrainingRuntime",
                                        "verbs": ["get", "list", "watch"]}]}
        if route.startswith(BASE + "/clustertrainingruntimes/"):
            name = route.rsplit("/", 1)[1]
            if not self.runtime_access:
                return 403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                             "code": 403, "message": f'clustertrainingruntimes.trainer.kubeflow.org "{name}" is '
                                                     "forbidden: cannot get resource at the cluster scope"}
            if name not in self.runtimes:
                return self.not_found(f'clustertrainingruntimes.trainer.kubeflow.org "{name}" not found')
            return 200, {"apiVersion": trainjob.API_VERSION, "kind": "ClusterTrainingRuntime",
                         "metadata": {"name": name}}
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


def _train(placement, dataset, out, stand_in, timeout_s=240.0, framework="torch"):
    return trainjob.run(dataset, out, workers=2, placement=placement, namespace="kfopt", timeout_s=timeout_s,
                        framework=framework, api_client=stand_in.client(), poll_s=0.2, run_id="t1", **TRAIN)


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


def test_rendered_keras_trainjob_runs_kfopts_tensorflow_runtime_and_matches_the_schema(tmp_path):
    placement = deployment.load("gke")
    manifest = trainjob.render("kfopt-train-k", "kfopt", workers=4, args=["--dataset", "gs://b/d"],
                               placement=placement, framework="keras")
    (tmp_path / "trainjob.yaml").write_text(yaml.safe_dump(manifest))
    done = validate_with_schema(tmp_path / "trainjob.yaml", SCHEMA)
    assert done.returncode == 0, done.stderr
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"name": "kfopt-tensorflow-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    assert yaml.safe_load(TF_RUNTIME.read_text())["metadata"]["name"] == spec["runtimeRef"]["name"]
    assert spec["trainer"]["command"] == ["python", "-m", "kfopt.models.keras_mwms"]
    assert spec["trainer"]["numNodes"] == 4 and "numProcPerNode" not in spec["trainer"]
    assert spec["trainer"]["env"] == [{"name": "KFOPT_NUM_NODES", "value": "4"}]
    assert spec["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    with pytest.raises(ConfigError, match="trains torch and keras models, not 'onnx'"):
        trainjob.render("x", "kfopt", workers=2, args=[], placement=placement, framework="onnx")


def test_tf_config_of_a_node_comes_from_its_index_the_jobset_hostnames_and_the_port():
    env = {"KFOPT_NUM_NODES": "3", "KFOPT_NODE_INDEX": "2", "KFOPT_JOBSET_NAME": "kfopt-train-ab",
           "KFOPT_TF_PORT": "2222"}
    assert json.loads(keras_mwms.trainer_tf_config(env)) == {
        "cluster": {"worker": [f"kfopt-train-ab-node-0-{i}.kfopt-train-ab:2222" for i in range(3)]},
        "task": {"type": "worker", "index": 2}}
    job = {"metadata": {"name": "kfopt-train-ab"},
           "spec": {"trainer": {"env": [{"name": "KFOPT_NUM_NODES", "value": "3"}]}}}
    assert runtime_env(job, 2) == env, "the shipped runtime gives exactly what trainer_tf_config reads"
    with pytest.raises(ConfigError, match="lacks KFOPT_NUM_NODES.*kubectl apply -k manifests/trainer"):
        keras_mwms.trainer_tf_config({**env, "KFOPT_NUM_NODES": ""})
    with pytest.raises(ConfigError, match=r"KFOPT_NODE_INDEX \(3\) must be between 0 and KFOPT_NUM_NODES - 1 \(2\)"):
        keras_mwms.trainer_tf_config({**env, "KFOPT_NODE_INDEX": "3"})
    with pytest.raises(ConfigError, match="must be integers"):
        keras_mwms.trainer_tf_config({**env, "KFOPT_TF_PORT": "http"})


def test_keras_trainjob_trains_on_two_nodes_and_the_baseline_is_collected(placed, tmp_path, kube):
    placement, dataset = placed
    stand_in = kube()
    metrics = _train(placement, dataset, tmp_path / "baseline", stand_in, framework="keras")
    (body,) = stand_in.posted()
    assert body["spec"]["runtimeRef"]["name"] == "kfopt-tensorflow-distributed"
    assert ("GET", f"{BASE}/clustertrainingruntimes/kfopt-tensorflow-distributed", None) in stand_in.requests
    assert metrics["workers"] == 2 and len(metrics["history"]["loss"]) == TRAIN["epochs"]
    meta = variant.read(tmp_path / "baseline")
    assert meta.framework == "keras" and meta.params["workers"] == 2
    assert meta.extra["distributed"] == "MultiWorkerMirroredStrategy"
    assert meta.extra["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert metrics["test_accuracy"] > 0.3, "two epochs on 300 digits should be far above the 10 % of chance"


def test_a_failed_keras_node_fails_the_stage_with_its_log_tail(placed, tmp_path, kube):
    placement, dataset = placed
    storage.write_bytes(dataset + "/val.npz", b"corrupt")
    with pytest.raises(ModelError, match=r"TrainJob kfopt/kfopt-train-t1 failed \(JobFailed.*node [01] \(pod "
                                         r"kfopt-train-t1-node-0-[01]\): .*kfopt: error:.*val\.npz"):
        _train(placement, dataset, tmp_path / "baseline", kube(), framework="keras")
    assert not (tmp_path / "baseline").exists()


def test_a_keras_job_that_never_finishes_times_out(placed, tmp_path, kube):
    placement, dataset = placed
    stand_in = kube(run_jobs=False)
    with pytest.raises(ModelError, match="kfopt-train-t1 did not complete within 0.5 s.*train.timeout_s"):
        _train(placement, dataset, tmp_path / "baseline", stand_in, timeout_s=0.5, framework="keras")
    assert [b["spec"]["runtimeRef"]["name"] for b in stand_in.posted()] == ["kfopt-tensorflow-distributed"]


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_a_cluster_without_trainer_names_the_crd_for_either_framework(placed, tmp_path, kube, framework):
    placement, dataset = placed
    stand_in = kube(trainer=False)
    with pytest.raises(ConfigError, match=r"CRD trainjobs\.trainer\.kubeflow\.org .*missing; install Kubeflow"):
        _train(placement, dataset, tmp_path / "baseline", stand_in, framework=framework)
    assert not stand_in.posted()


@pytest.mark.parametrize("framework,runtime,install", [
    ("keras", "kfopt-tensorflow-distributed", "kubectl apply -k manifests/trainer"),
    ("torch", "torch-distributed", "manifests/overlays/runtimes"),
])
def test_a_missing_runtime_is_named_with_how_to_install_it(placed, tmp_path, kube, framework, runtime, install):
    placement, dataset = placed
    stand_in = kube(runtimes=tuple(r for r in RUNTIMES if r != runtime))
    with pytest.raises(ConfigError, match=rf"Trainer is installed, but the ClusterTrainingRuntime {runtime} .*"
                                          rf"is missing; .*{install}"):
        _train(placement, dataset, tmp_path / "baseline", stand_in, framework=framework)
    assert not stand_in.posted() and not (tmp_path / "baseline").exists()


def test_runtimes_the_service_account_may_not_read_are_not_checked(kube):
    """Without get on clustertrainingruntimes (cluster-scoped; the namespaced Role cannot grant it) the
    check passes on: a missing runtime then shows in the TrainJob's Failed condition."""
    from kubernetes import client

    stand_in = kube(runtimes=(), runtime_access=False)
    trainjob.check_trainer(client.CustomObjectsApi(stand_in.client()), trainjob.RUNTIMES["keras"])
    assert stand_in.requests[-1][1] == f"{BASE}/clustertrainingruntimes/kfopt-tensorflow-distributed"


@pytest.mark.parametrize("workers,batch,msg", [(0, 32, "at least 1"), (64, 32, "more than train.batch_size"),
                                               (3, 32, "multiple of train.workers")])
def test_bad_keras_worker_counts_are_refused_before_anything_is_created(workers, batch, msg, tmp_path, kube):
    stand_in = kube()
    with pytest.raises(ConfigError, match=msg):
        trainjob.run("gs://b/d", tmp_path / "o", workers=workers, placement=deployment.load("gke"), namespace="kfopt",
                     timeout_s=1, framework="keras", api_client=stand_in.client(), **{**TRAIN, "batch_size": batch})
    assert not stand_in.requests and not (tmp_path / "o").exists()


def test_keras_on_a_deployment_without_a_gpu_pool_is_refused(tmp_path, dataset_dir, kube):
    stand_in = kube()
    placement = dataclasses.replace(deployment.load("cpu-only"), pipeline_root="gs://bucket/root")
    with pytest.raises(ConfigError, match="no 'gpu' node pool, which distributed training"):
        trainjob.run("gs://bucket/root/ds", tmp_path / "o", workers=2, placement=placement, namespace="kfopt",
                     timeout_s=1, framework="keras", api_client=stand_in.client(), **TRAIN)
    assert not stand_in.posted()
    with pytest.raises(ConfigError, match="needs the deployment file"):
        train.run(dataset_dir, tmp_path / "o", workers=2, engine="trainjob", **TRAIN)
    assert not (tmp_path / "o").exists()
