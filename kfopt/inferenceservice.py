"""KServe InferenceService manifests (serving.kserve.io/v1beta1) for a promoted model, one per target.

Which server runs a model follows from its format, never from what happens to be easy to serve:

- ONNX whose Triton repository (kfopt.triton, written by publish) holds that same variant: the
  Triton runtime (`kserve-tritonserver`, protocol v2), pointed at the repository;
- a TensorRT plan: the Triton runtime on the GPU pool (kfopt.deploy checks the engine's builder
  against the Triton image's TensorRT first);
- everything else (LiteRT, OpenVINO IR, SavedModel, XLA, torch): the pool's kfopt image running
  `kfopt serve` on the variant's own files, the runner the benchmark timed. KServe's OVMS runtime
  wants an `<model>/1/` layout that model/ does not have, and TF Serving would not run an XLA or
  int8 variant the way it was measured.

The predictor lands where the benchmark measured the model: on the pool of `benchmark_<hardware>`
in the deployment file, with its node selector, tolerations, accelerator and resource profile.
"""

import re
from typing import Any

from kfopt import deployment as deploy_mod

API_VERSION = "serving.kserve.io/v1beta1"
GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
CRD = f"{PLURAL}.{GROUP}"
TRITON_RUNTIME = "kserve-tritonserver"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri / STORAGE_URI
PORT = 8080
MODES = ("Serverless", "RawDeployment")
_DNS = re.compile(r"[^a-z0-9-]+")


def service_name(model: str, target: str) -> str:
    """A DNS-1035 label (what KServe requires of a name): lower case, starts with a letter, at most 63."""
    name = _DNS.sub("-", f"{model}-{target}".lower()).strip("-")
    if not name[:1].isalpha():
        name = f"m-{name}"
    return name[:63].rstrip("-")


def resources(profile: deploy_mod.Resources, pool: deploy_mod.Pool) -> dict[str, Any]:
    """The container's requests and limits: the pool's resource profile plus its accelerator."""
    limits = {"cpu": profile.cpu_limit, "memory": profile.memory_limit}
    requests = {"cpu": profile.cpu_request, "memory": profile.memory_request}
    if pool.accelerator:
        limits[pool.accelerator.resource] = str(pool.accelerator.count)
        requests[pool.accelerator.resource] = str(pool.accelerator.count)
    return {"limits": limits, "requests": requests}


def _tolerations(pool: deploy_mod.Pool) -> list[dict[str, str]]:
    out = []
    for t in pool.tolerations:
        item = {"key": t.key, "operator": t.operator, "effect": t.effect}
        if t.value is not None:
            item["value"] = t.value
        out.append(item)
    return out


def triton_model(storage_uri: str, fmt: str, runtime_version: str, resources: dict[str, Any]) -> dict[str, Any]:
    """predictor.model for the Triton runtime serving a kfopt Triton repository."""
    return {"modelFormat": {"name": "tensorrt" if fmt == "tensorrt" else "onnx"}, "runtime": TRITON_RUNTIME,
            "runtimeVersion": runtime_version, "protocolVersion": "v2", "storageUri": storage_uri,
            "resources": resources}


def kfopt_container(image: str, storage_uri: str, model: str, max_batch: int,
                    resources: dict[str, Any]) -> dict[str, Any]:
    """A custom predictor container: `kfopt serve` on the variant that KServe downloads to /mnt/models."""
    probe = {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 5}
    return {"name": "kserve-container", "image": image,
            "args": ["kfopt", "serve", "--variant", MODEL_DIR, "--name", model, "--host", "0.0.0.0",
                     "--port", str(PORT), "--max-batch", str(max_batch)],
            "env": [{"name": "STORAGE_URI", "value": storage_uri}],
            "ports": [{"containerPort": PORT, "protocol": "TCP"}],
            "readinessProbe": probe, "resources": resources,
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}}


def render(*, name: str, namespace: str, model: str, target: str, version: int, variant: str, mode: str,
           pool: deploy_mod.Pool, profile: deploy_mod.Resources, service_account: str | None,
           predictor: dict[str, Any]) -> dict[str, Any]:
    """The InferenceService; `predictor` is {"model": triton_model(...)} or {"containers": [kfopt_container(...)]}."""
    spec: dict[str, Any] = {"minReplicas": 1, **predictor}
    if pool.node_selector:
        spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        spec["tolerations"] = _tolerations(pool)
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "kfopt", "app.kubernetes.io/name": name,
                                    "kfopt.dev/target": target},
                         "annotations": {"serving.kserve.io/deploymentMode": mode, "kfopt.dev/model": model,
                                         "kfopt.dev/model-version": str(version), "kfopt.dev/variant": variant}},
            "spec": {"predictor": spec}}
