"""Data-parallel training on a cluster: a Kubeflow Trainer v2 `TrainJob`, for torch and Keras models alike.

kfopt does not run distributed training itself on a cluster; it hands it to the cluster's engine, one
engine for both frameworks. The train stage (`train.workers > 1`, `train.engine: trainjob`) renders one
TrainJob with N nodes on the deployment's GPU pool (its image, node selector, tolerations and resource
profile), creates it through the Kubernetes API (CustomObjectsApi), follows its conditions until
Complete or Failed, and collects the baseline the job wrote to the pipeline's object storage. The
framework picks the runtime (`runtimeRef`) and the entry point (`command`), see RUNTIMES:

- torch: Trainer's `torch-distributed` runtime; `python -m kfopt.models.torch_ddp` reads the PET_*
  rendezvous variables it injects;
- Keras: kfopt's `kfopt-tensorflow-distributed` runtime (manifests/trainer/; Trainer ships no TensorFlow
  runtime); `python -m kfopt.models.keras_mwms` builds TF_CONFIG from the node index, the JobSet name
  and the port the runtime passes, and the node count the TrainJob passes.

A failed job is reported with the log tail of its failed node pods.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from kfopt import deployment as deploy_mod
from kfopt.errors import ConfigError, ModelError

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
API_VERSION = f"{GROUP}/{VERSION}"
CRD = f"{PLURAL}.{GROUP}"
RUNTIME_PLURAL = "clustertrainingruntimes"
POOL = "gpu"
#: The runtime's replicated job (and container) that runs the trainer: kfopt's entry point.
NODE = "node"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
LOG_TAIL_LINES = 20
INSTALL = "install Kubeflow Trainer v2 (manifests/README.md, Prerequisites), or set train.engine: local"


@dataclass(frozen=True)
class Runtime:
    """The ClusterTrainingRuntime a framework's TrainJob runs on, its entry point, and how to install it."""

    name: str
    module: str
    install: str


RUNTIMES = {
    "torch": Runtime("torch-distributed", "kfopt.models.torch_ddp",
                     "it ships with Trainer's default runtimes: kubectl apply --server-side -k "
                     "'https://github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=v2.3.0'"),
    "keras": Runtime("kfopt-tensorflow-distributed", "kfopt.models.keras_mwms",
                     "it is kfopt's own: kubectl apply -k manifests/trainer"),
}


def runtime_for(framework: str) -> Runtime:
    if framework not in RUNTIMES:
        raise ConfigError(f"train.engine: trainjob trains {' and '.join(RUNTIMES)} models, not {framework!r}; "
                          "set train.engine: local.")
    return RUNTIMES[framework]


class TrainJobError(ModelError):
    """The TrainJob could not be created, failed, or did not finish in time."""


def name_for(run_id: str) -> str:
    """A valid TrainJob name (DNS label, at most 63 characters) from a run id."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"kfopt-train-{run_id}".lower()).strip("-")[:63].rstrip("-")
    return name


def gpu_pool(placement: deploy_mod.Deployment) -> tuple[deploy_mod.Pool, deploy_mod.Resources]:
    """The pool the TrainJob's nodes land on, and the resource profile of the first stage placed there."""
    if POOL not in placement.pools:
        raise ConfigError(f"Deployment '{placement.name}' has no '{POOL}' node pool, which distributed training "
                          f"(train.engine: trainjob) runs on; add one (see config/deployment/gke.yaml) or set "
                          "train.engine: local.")
    stages = [s for s in placement.stages.values() if s.pool == POOL]
    if not stages:
        raise ConfigError(f"Deployment '{placement.name}' places no stage on its '{POOL}' pool, so there is no "
                          "resource profile for the training nodes; place e.g. benchmark_gpu on it.")
    return placement.pools[POOL], stages[0].resources


def render(name: str, namespace: str, *, workers: int, args: list[str], placement: deploy_mod.Deployment,
           framework: str = "torch") -> dict[str, Any]:
    """The TrainJob manifest: N nodes of kfopt's GPU image, each one process of the framework's entry point."""
    from kfopt.models import keras_mwms

    runtime = runtime_for(framework)
    pool, res = gpu_pool(placement)
    requests = {"cpu": res.cpu_request, "memory": res.memory_request}
    limits = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if pool.accelerator:
        requests[pool.accelerator.resource] = limits[pool.accelerator.resource] = str(pool.accelerator.count)
    pod: dict[str, Any] = {}
    if pool.node_selector:
        pod["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod["tolerations"] = [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                                  ("effect", t.effect)) if v is not None} for t in pool.tolerations]
    if placement.service_account:
        pod["serviceAccountName"] = placement.service_account  # the workers read and write gs:// as the pipeline
    trainer: dict[str, Any] = {"image": pool.image, "command": ["python", "-m", runtime.module], "args": args,
                               "numNodes": workers, "resourcesPerNode": {"requests": requests, "limits": limits}}
    if framework == "torch":
        trainer["numProcPerNode"] = 1
    else:  # Trainer's plain policy injects nothing: the node count is the TrainJob's to pass
        trainer["env"] = [{"name": keras_mwms.NUM_NODES, "value": str(workers)}]
    manifest: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "kfopt"}},
        "spec": {"runtimeRef": {"name": runtime.name, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
                 "trainer": trainer},
    }
    if pod:
        manifest["spec"]["runtimePatches"] = [{"manager": "kfopt.dev/train", "trainingRuntimeSpec": {"template": {
            "spec": {"replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}}}]
    return manifest


def _message(err) -> str:
    try:
        return json.loads(err.body).get("message", err.body)
    except (TypeError, ValueError):
        return err.body or err.reason


def check_trainer(api, runtime: Runtime) -> None:
    """Trainer's TrainJob CRD and the framework's ClusterTrainingRuntime must be installed; one clear error if not.

    A service account that may not read ClusterTrainingRuntimes (403; Trainer's kubeflow-platform
    overlay grants every authenticated user that) skips the runtime check: a missing runtime then shows
    in the TrainJob's Failed condition instead.
    """
    from kubernetes.client.exceptions import ApiException

    missing = ConfigError(f"Kubeflow Trainer is not installed on this cluster: the CRD {CRD} ({API_VERSION}) is "
                          f"missing; {INSTALL}.")
    try:
        found = api.get_api_resources(GROUP, VERSION)
    except ApiException as err:
        if err.status == 404:
            raise missing from None
        raise TrainJobError(f"the Kubernetes API could not list {API_VERSION}: HTTP {err.status} ({_message(err)}).") from None
    if PLURAL not in {r.name for r in found.resources}:
        raise missing
    try:
        api.get_cluster_custom_object(GROUP, VERSION, RUNTIME_PLURAL, runtime.name)
    except ApiException as err:
        if err.status == 404:
            raise ConfigError(f"Kubeflow Trainer is installed, but the ClusterTrainingRuntime {runtime.name} that "
                              f"{runtime.module} runs on is missing; {runtime.install} (or set train.engine: "
                              "local).") from None
        if err.status != 403:
            raise TrainJobError(f"the Kubernetes API could not read ClusterTrainingRuntime {runtime.name}: "
                                f"HTTP {err.status} ({_message(err)}).") from None


def create(api, manifest: dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    meta = manifest["metadata"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, manifest)
    except ApiException as err:
        if err.status == 403:
            raise ConfigError(f"the Kubernetes API refused to create TrainJob {meta['namespace']}/{meta['name']} "
                              f"({_message(err)}); grant the pipeline's service account the TrainJob rules of "
                              "manifests/base/role.yaml.") from None
        raise TrainJobError(f"the Kubernetes API could not create TrainJob {meta['namespace']}/{meta['name']}: "
                            f"HTTP {err.status} ({_message(err)}).") from None


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def failed_node_logs(core, namespace: str, name: str) -> str:
    """The last lines of each failed node pod's log, as one line per pod."""
    from kubernetes.client.exceptions import ApiException

    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOBSET_LABEL}={name}").items
    except ApiException as err:
        return f"(its pods could not be listed: HTTP {err.status})"
    tails = []
    for pod in pods:
        if pod.status is None or pod.status.phase != "Failed":
            continue
        node = (pod.metadata.labels or {}).get(INDEX_LABEL, "?")
        try:
            log = core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=LOG_TAIL_LINES)
        except ApiException as err:
            log = f"(log unreadable: HTTP {err.status})"
        tails.append(f"node {node} (pod {pod.metadata.name}): " + " | ".join(l for l in log.splitlines() if l.strip()))
    return " ;; ".join(tails) or "(no failed pod found; see kubectl describe trainjob)"


def wait(api, core, namespace: str, name: str, timeout_s: float, poll_s: float = 5.0) -> dict[str, Any]:
    """Poll the TrainJob until Complete; TrainJobError with the failed nodes' log tails if Failed or late."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            raise TrainJobError(f"the Kubernetes API could not read TrainJob {namespace}/{name}: "
                                f"HTTP {err.status} ({_message(err)}).") from None
        if _condition(obj, "Complete"):
            return obj
        failed = _condition(obj, "Failed")
        if failed:
            raise TrainJobError(f"TrainJob {namespace}/{name} failed ({failed.get('reason')}: "
                                f"{failed.get('message')}). Failed nodes: {failed_node_logs(core, namespace, name)}")
        if time.monotonic() >= deadline:
            raise TrainJobError(f"TrainJob {namespace}/{name} did not complete within {timeout_s:g} s (conditions: "
                                f"{[c.get('type') for c in (obj.get('status') or {}).get('conditions') or []]}); "
                                f"see `kubectl describe trainjob -n {namespace} {name}`, or raise train.timeout_s.")
        time.sleep(poll_s)


def submit_and_wait(manifest: dict[str, Any], *, runtime: Runtime, timeout_s: float, api_client=None,
                    poll_s: float = 5.0) -> dict[str, Any]:
    """Check Trainer and the job's runtime are installed, create the TrainJob, follow it to Complete (or raise)."""
    from kubernetes import client

    api_client = api_client or _default_client()
    api = client.CustomObjectsApi(api_client)
    check_trainer(api, runtime)
    create(api, manifest)
    meta = manifest["metadata"]
    return wait(api, client.CoreV1Api(api_client), meta["namespace"], meta["name"], timeout_s, poll_s)


def _default_client():
    from kfopt.kube import api_client

    return api_client("create the TrainJob on", "run the pipeline on the cluster, or set train.engine: local")


def gcs_uri(path) -> str:
    """The gs:// URI of a KFP artifact path (KFP mounts gs://bucket/x at /gcs/bucket/x)."""
    text = str(path)
    if text.startswith("gs://"):
        return text
    if text.startswith("/gcs/"):
        return "gs://" + text.removeprefix("/gcs/")
    raise ConfigError(f"train.engine: trainjob needs the dataset artifact in object storage so that the training "
                      f"nodes can read it, but it is the local path {text}; run the pipeline with a gs:// "
                      "pipeline_root (deployment file), or set train.engine: local.")


def run(dataset_dir, out_dir, *, workers: int, placement: deploy_mod.Deployment, namespace: str, timeout_s: float,
        framework: str = "torch", api_client=None, poll_s: float = 5.0, run_id: str = "", **train: Any
        ) -> dict[str, Any]:
    """The train stage on Trainer: the TrainJob writes the baseline to storage, then it is collected to out_dir."""
    import shutil
    import tempfile
    from pathlib import Path

    from kfopt import storage, variant
    from kfopt.models.workers import check_workers, worker_args

    runtime = runtime_for(framework)
    check_workers(workers, train["batch_size"])
    if not (placement.pipeline_root or "").startswith("gs://"):
        raise ConfigError(f"Deployment '{placement.name}' has no gs:// pipeline_root, where the TrainJob writes "
                          "the baseline; set one, or set train.engine: local.")
    name = name_for(run_id or uuid.uuid4().hex[:10])
    scratch = f"{placement.pipeline_root.rstrip('/')}/trainjobs/{name}"
    args = worker_args(gcs_uri(dataset_dir), f"{scratch}/baseline", f"{scratch}/metrics.json", **train)
    submit_and_wait(render(name, namespace, workers=workers, args=args, placement=placement, framework=framework),
                    runtime=runtime, timeout_s=timeout_s, api_client=api_client, poll_s=poll_s)
    with tempfile.TemporaryDirectory(prefix="kfopt-trainjob-") as tmp:
        fetched = storage.fetch(f"{scratch}/baseline", Path(tmp))
        variant.read(fetched)  # what the job wrote is a whole, checked baseline before it becomes the output
        with variant.staged_dir(Path(out_dir)) as staged:
            shutil.copytree(fetched, staged, dirs_exist_ok=True)
    return storage.read_json(f"{scratch}/metrics.json")
