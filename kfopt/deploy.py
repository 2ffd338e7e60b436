"""The deploy stage: serve what publish promoted, as a KServe InferenceService per target (off by default).

The pipeline should end where the user's traffic begins. For every target whose blessing says
promoted (or already in service, "unchanged"), this renders an InferenceService (kfopt.inferenceservice)
that serves exactly the variant the report chose, from the registry's deployment folder, on the node
pool that benchmarked it; writes it into the registry next to the model
(`<deployment folder>/kserve/inferenceservice.yaml`, for GitOps users who apply it themselves); then,
with `apply`, creates or replaces it through the Kubernetes API and waits until it is Ready.

- Canary: an update of an existing InferenceService gets `canaryTrafficPercent` (canary_percent <
  100), so the new model takes that share of the traffic until someone raises it to 100. Traffic
  splitting needs KServe's Serverless mode (Knative); in RawDeployment mode KServe has no canary: the
  update replaces the model by a rolling update of its Deployment, and the result says so.
- gpu: a TensorRT plan runs only on the TensorRT version (and GPU architecture) it was built with, so
  the engine's recorded builder (kfopt.json extra.builder) must match the Triton image's TensorRT
  (`triton_tensorrt`, the TensorRT of `triton_version`) or nothing is applied.
- edge: devices, not a cluster, run edge models; they stay in the registry (model/).
- Nothing is applied if any target is refused: the plan is checked whole first.
"""

import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from kfopt import deployment as deploy_mod
from kfopt import inferenceservice as isvc
from kfopt import storage, variant
from kfopt.errors import ConfigError, KfoptError

DEPLOY_JSON = "deploy.json"
SERVED = ("promoted", "unchanged")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class DeployError(KfoptError):
    """The cluster refused or never finished serving a model."""


def _check(enabled: bool, namespace: str, canary_percent: int, timeout_s: float, mode: str) -> None:
    if not enabled:
        return
    if not _NAMESPACE.fullmatch(namespace or ""):
        raise ConfigError(f"deploy.namespace {namespace!r} is not a Kubernetes namespace name (lower case letters, "
                          "digits and '-', at most 63).")
    if not 1 <= canary_percent <= 100:
        raise ConfigError(f"deploy.canary_percent must be in 1..100 (100: no canary), got {canary_percent}.")
    if not timeout_s > 0:
        raise ConfigError(f"deploy.timeout_s must be positive, got {timeout_s}.")
    if mode not in isvc.MODES:
        raise ConfigError(f"deploy.mode must be one of {', '.join(isvc.MODES)} (KServe's deployment modes), got "
                          f"{mode!r}.")


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def _tensorrt_refusal(meta: variant.VariantMeta, triton_version: str, triton_tensorrt: str) -> str | None:
    builder = meta.extra.get("builder") or {}
    if builder.get("module") != "tensorrt":
        return (f"{meta.name} was built by {builder.get('module') or 'an unrecorded builder'}, not by TensorRT "
                "itself; Triton's tensorrt_plan backend loads only engines built by tensorrt")
    if _major_minor(builder.get("version", "")) != _major_minor(triton_tensorrt):
        return (f"{meta.name} was built with TensorRT {builder.get('version')}, but the Triton image "
                f"{triton_version} runs TensorRT {triton_tensorrt}; a plan runs only on the TensorRT it was built "
                "with. Rebuild the engine in an image with the serving TensorRT, or set deploy.triton_version and "
                "deploy.triton_tensorrt (pipeline parameters deploy_triton_version, deploy_triton_tensorrt) to a "
                "Triton release with that TensorRT")
    return None


class _Planner:
    """Turns one blessing into an InferenceService, a "not served" reason, or a refusal."""

    def __init__(self, placement: deploy_mod.Deployment, namespace: str, mode: str, triton_version: str,
                 triton_tensorrt: str):
        self.placement, self.namespace, self.mode = placement, namespace, mode
        self.triton_version, self.triton_tensorrt = triton_version, triton_tensorrt

    def plan(self, model: str, target: str, blessing: dict[str, Any]) -> dict[str, Any]:
        row = {"target": target, "variant": blessing.get("variant"), "version": blessing.get("serving_version"),
               "uri": blessing.get("uri")}
        if blessing.get("decision") not in SERVED or not blessing.get("uri"):
            return {**row, "decision": "not served", "reason": f"nothing promoted ({blessing.get('decision')})"}
        if target == "edge":
            return {**row, "decision": "not served",
                    "reason": "edge models run on devices, not on the cluster; take them from the registry (model/)"}
        uri = blessing["uri"]
        card = storage.read_json(f"{uri}/model_card.json")
        meta = variant.VariantMeta.from_dict(storage.read_json(f"{uri}/model/kfopt.json"))
        hardware = card["environment"]["hardware"]
        task = f"benchmark_{hardware}"
        pool = self.placement.pool_for(task)
        if hardware in ("gpu", "tpu") and not pool.accelerator:
            return {**row, "decision": "not served", "reason": f"deployment {self.placement.name} puts {task} on "
                    f"pool {pool.name}, which has no {hardware}; the model was measured on a {hardware}"}
        resources = isvc.resources(self.placement.resources_for(task), pool)
        triton = (card.get("serving") or {}).get("triton") or {}
        row.update(variant=meta.name, version=card["version"], format=meta.format, pool=pool.name)
        if meta.format == "tensorrt":
            refusal = _tensorrt_refusal(meta, self.triton_version, self.triton_tensorrt)
            if refusal:
                return {**row, "decision": "refused", "reason": refusal}
        if meta.format in ("onnx", "tensorrt") and triton.get("variant") == meta.name:
            predictor = {"model": isvc.triton_model(f"{uri}/triton", meta.format, self.triton_version, resources)}
            row["server"] = f"Triton {self.triton_version} ({isvc.TRITON_RUNTIME}, protocol v2)"
        elif meta.format == "tensorrt":
            return {**row, "decision": "refused", "reason": f"the Triton repository in {uri} does not hold {meta.name}"}
        else:
            max_batch = max((int(b) for b in card["metrics"]["latency"]), default=64)
            predictor = {"containers": [isvc.kfopt_container(pool.image, f"{uri}/model", model, max_batch,
                                                             resources)]}
            row["server"] = f"kfopt serve in {pool.image} (protocol v2; {meta.format} has no KServe runtime kfopt uses)"
        manifest = isvc.render(name=isvc.service_name(model, target), namespace=self.namespace, model=model,
                               target=target, version=card["version"], variant=meta.name, mode=self.mode, pool=pool,
                               profile=self.placement.resources_for(task),
                               service_account=self.placement.service_account, predictor=predictor)
        return {**row, "decision": "planned", "manifest": manifest}


# --- the Kubernetes API -----------------------------------------------------------------------------


def _custom_api(api_client=None):
    from kubernetes import client

    from kfopt.kube import api_client as default_client

    api_client = api_client or default_client(
        "deploy to", "run the stage on the cluster, or set deploy.apply=false to only write the manifests")
    return client.CustomObjectsApi(api_client)


def _api_error(err, action: str) -> KfoptError:
    try:
        message = json.loads(err.body).get("message", err.body)
    except (TypeError, ValueError):
        message = err.body or err.reason
    if err.status == 403:
        return ConfigError(f"the Kubernetes API refused to {action} ({message}); grant the pipeline's service "
                           "account the InferenceService rules of manifests/base/role.yaml.")
    return DeployError(f"the Kubernetes API could not {action}: HTTP {err.status} {err.reason} ({message}).")


def check_kserve(api) -> None:
    """KServe's InferenceService CRD must be installed: one clear error naming it otherwise."""
    from kubernetes.client.exceptions import ApiException

    missing = DeployError(f"KServe is not installed on this cluster: the CRD {isvc.CRD} ({isvc.API_VERSION}) is "
                          "missing; install KServe (manifests/README.md, Prerequisites) or set deploy.enabled=false.")
    try:
        found = api.get_api_resources(isvc.GROUP, isvc.VERSION)
    except ApiException as err:
        if err.status == 404:
            raise missing from None
        raise _api_error(err, f"list the resources of {isvc.API_VERSION}") from None
    if isvc.PLURAL not in {r.name for r in found.resources}:
        raise missing


def _condition_text(status: dict[str, Any]) -> str:
    if not status:
        return "it has no status yet (is the KServe controller running?)"
    parts = [f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason') or ''}: {c.get('message')})"
                                                      if c.get("message") else "")
             for c in status.get("conditions") or [] if c.get("status") != "True"]
    model = status.get("modelStatus") or {}
    failure = model.get("lastFailureInfo") or {}
    if failure:
        parts.append(f"model: {failure.get('reason')}: {failure.get('message')}")
    elif model.get("transitionStatus"):
        parts.append(f"model: {model['transitionStatus']}")
    return "; ".join(parts) or "Ready is not True yet"


def _ready(obj: dict[str, Any], generation: int) -> bool:
    status = obj.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and int(status.get("observedGeneration") or 0) >= generation


def wait_ready(api, namespace: str, name: str, generation: int, timeout_s: float) -> dict[str, Any]:
    """Poll the InferenceService until Ready for `generation`; DeployError with the predictor's status if not."""
    deadline = time.monotonic() + timeout_s
    poll = min(2.0, max(0.05, timeout_s / 20))
    while True:
        obj = _get(api, namespace, name)
        if obj is not None and _ready(obj, generation):
            return obj
        if time.monotonic() >= deadline:
            status = (obj or {}).get("status") or {}
            raise DeployError(f"InferenceService {namespace}/{name} was not Ready within {timeout_s:g} s: "
                              f"{_condition_text(status)}. See `kubectl describe inferenceservice -n {namespace} "
                              f"{name}` and its predictor pod's logs; raise deploy.timeout_s if it is only slow.")
        time.sleep(poll)


def _get(api, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(isvc.GROUP, isvc.VERSION, namespace, isvc.PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise _api_error(err, f"read InferenceService {namespace}/{name}") from None


def apply(api, manifest: dict[str, Any], canary_percent: int, mode: str) -> tuple[str, int, str | None]:
    """Create the InferenceService, or replace it (with a canary when asked); → (action, generation, note)."""
    from kubernetes.client.exceptions import ApiException

    meta = manifest["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    existing = _get(api, namespace, name)
    note = None
    try:
        if existing is None:
            made = api.create_namespaced_custom_object(isvc.GROUP, isvc.VERSION, namespace, isvc.PLURAL, manifest)
            return "created", int(made["metadata"].get("generation") or 1), note
        old = existing["metadata"].get("annotations") or {}
        if all(old.get(k) == v for k, v in meta["annotations"].items()):
            return "unchanged", int(existing["metadata"].get("generation") or 1), note
        body = json.loads(json.dumps(manifest))
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        if canary_percent < 100 and mode == "Serverless":
            body["spec"]["predictor"]["canaryTrafficPercent"] = canary_percent
            note = (f"canary: the new model takes {canary_percent}% of the traffic; raise "
                    "spec.predictor.canaryTrafficPercent to 100 to promote it")
        elif canary_percent < 100:
            note = ("RawDeployment mode has no canary: the update replaces the model by a rolling update "
                    f"(canary_percent {canary_percent} not applied)")
        made = api.replace_namespaced_custom_object(isvc.GROUP, isvc.VERSION, namespace, isvc.PLURAL, name, body)
        return "updated", int(made["metadata"].get("generation") or 1), note
    except ApiException as err:
        action = "create" if existing is None else "update"
        raise _api_error(err, f"{action} InferenceService {namespace}/{name}") from None


# --- the stage --------------------------------------------------------------------------------------


def _load_publish(publish_dir: Path) -> dict[str, Any]:
    path = Path(publish_dir) / "publish.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KfoptError(f"{path} is not a readable publish result ({err}); run the publish stage first.") from None


def _write(out_dir: Path, result: dict[str, Any]) -> None:
    with variant.staged_dir(Path(out_dir)) as tmp:
        (tmp / "inferenceservices").mkdir()
        for row in result["targets"].values():
            if row.get("manifest"):
                (tmp / "inferenceservices" / f"{row['target']}.yaml").write_text(yaml.safe_dump(row["manifest"]))
        (tmp / DEPLOY_JSON).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def run(publish_dir: Path, out_dir: Path, *, enabled: bool = False, apply_manifests: bool = True,
        namespace: str = "kfopt", canary_percent: int = 100, timeout_s: float = 600.0, mode: str = "Serverless",
        deployment: str = "", triton_version: str = "25.06-py3", triton_tensorrt: str = "10.11",
        api_client=None) -> dict[str, Any]:
    """Render, record and (apply_manifests) apply an InferenceService per promoted target; → metrics.

    `deployment` names the deployment file (KFOPT_DEPLOYMENT_DIR) whose pools the predictors use;
    `api_client` is a kubernetes ApiClient (default: in-cluster, else the kubeconfig).
    """
    _check(enabled, namespace, canary_percent, timeout_s, mode)
    pub = _load_publish(publish_dir)
    result: dict[str, Any] = {"enabled": enabled, "applied": False, "namespace": namespace, "mode": mode,
                              "name": pub.get("name"), "targets": {}}
    if not enabled:
        result["targets"] = {t: {"target": t, "decision": "off", "reason": "deploying is switched off "
                                 "(deploy.enabled is false)"} for t in pub.get("targets", {})}
        _write(out_dir, result)
        return {"deployed": 0}
    if not deployment:
        raise ConfigError("deploy.deployment is empty: name the deployment file whose node pools serve the models "
                          "(pipeline parameter deploy_deployment; `kfopt compile` fills in the one it compiles for).")
    planner = _Planner(deploy_mod.load(deployment), namespace, mode, triton_version, triton_tensorrt)
    rows = {t: planner.plan(pub["name"], t, b) for t, b in pub.get("targets", {}).items()}
    refused = [f"{r['target']}: {r['reason']}" for r in rows.values() if r["decision"] == "refused"]
    if refused:
        raise ConfigError("Not deploying (nothing was applied): " + "; ".join(refused) + ".")
    planned = [r for r in rows.values() if r["decision"] == "planned"]
    for row in planned:
        storage.write_text(f"{row['uri']}/kserve/inferenceservice.yaml", yaml.safe_dump(row["manifest"]))
        row["manifest_uri"] = f"{row['uri']}/kserve/inferenceservice.yaml"
    if apply_manifests and planned:
        api = _custom_api(api_client)
        check_kserve(api)
        for row in planned:
            action, generation, note = apply(api, row["manifest"], canary_percent, mode)
            meta = row["manifest"]["metadata"]
            obj = wait_ready(api, meta["namespace"], meta["name"], generation, timeout_s)
            row.update(decision=action, note=note, url=(obj.get("status") or {}).get("url"))
        result["applied"] = True
    else:
        for row in planned:
            row["decision"] = "written"
    result["targets"] = rows
    _write(out_dir, result)
    return {"deployed": sum(r["decision"] in ("created", "updated", "unchanged") for r in rows.values()),
            "manifests": len(planned)}
