"""The deploy stage against a recording stand-in for the Kubernetes API.

No Kubernetes cluster (and so no KServe) exists here, so `KubeStandIn` is an HTTP server on 127.0.0.1
that speaks the few endpoints the stage uses through the real `kubernetes` client: API discovery of
serving.kserve.io/v1beta1, and get/create/replace of namespaced InferenceServices (resourceVersion
checked, generation bumped on every write, like the API server). A minimal "controller" marks an
InferenceService Ready for its new generation a few reads after each write, or never, with a failing
predictor status. Everything else is real: a publish of a model trained here into a real registry,
the shipped deployment files, the rendered manifests (validated against the pinned KServe CRD schema
with jsonschema). The gpu case edits a copy of a real promotion into a TensorRT one, since no
TensorRT engine can be built here.
"""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from publish_inputs import retrained_roots, run_outputs  # noqa: F401  (fixture)
from test_manifests import validate_with_schema

from kfopt import deploy, publish
from kfopt import inferenceservice as isvc
from kfopt.errors import ConfigError

SCHEMA = Path(__file__).parent / "schemas" / "kserve-inferenceservice-v1beta1.json"
BASE = "/apis/serving.kserve.io/v1beta1"


class KubeStandIn:
    """Records every request; `ready_after`: reads after a write until Ready (None: never)."""

    def __init__(self, kserve: bool = True, ready_after: int | None = 2, failure: str = "", forbid: bool = False):
        self.kserve, self.ready_after, self.failure, self.forbid = kserve, ready_after, failure, forbid
        self.objects: dict[tuple[str, str], dict] = {}
        self.reads: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.version = 100
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stand_in.requests.append((self.command, self.path, body))
                code, answer = stand_in.answer(self.command, self.path.split("?")[0], body)
                self._send(code, answer)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def status(code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                      "message": message, "code": code}

    def _controller(self, key: tuple[str, str]) -> None:
        obj = self.objects[key]
        self.reads[key] = self.reads.get(key, 0) + 1
        generation = obj["metadata"]["generation"]
        if self.ready_after is not None and self.reads[key] >= self.ready_after:
            obj["status"] = {"observedGeneration": generation, "url": f"http://{key[1]}.{key[0]}.example.com",
                             "conditions": [{"type": "PredictorReady", "status": "True"},
                                            {"type": "Ready", "status": "True"}]}
        elif self.failure:
            obj["status"] = {"observedGeneration": generation, "conditions": [
                {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed", "message": self.failure},
                {"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": self.failure}],
                "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                                "lastFailureInfo": {"reason": "ModelLoadFailed", "message": self.failure}}}

    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        if not self.kserve:
            return self.status(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and path == BASE:
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "serving.kserve.io/v1beta1",
                         "resources": [{"name": "inferenceservices", "singularName": "inferenceservice",
                                        "namespaced": True, "kind": "InferenceService", "shortNames": ["isvc"],
                                        "verbs": ["create", "get", "list", "patch", "update", "watch"]}]}
        parts = path.removeprefix(BASE + "/").split("/")  # namespaces/<ns>/inferenceservices[/<name>]
        namespace, name = parts[1], parts[3] if len(parts) > 3 else (body or {}).get("metadata", {}).get("name")
        key = (namespace, name)
        self.version += 1
        if method == "GET":
            if key not in self.objects:
                return self.status(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found')
            self._controller(key)
            return 200, self.objects[key]
        if method == "POST" and self.forbid:
            return self.status(403, "Forbidden", 'inferenceservices.serving.kserve.io is forbidden: User '
                                                 '"system:serviceaccount:kfopt:kfopt-pipeline-runner" cannot create '
                                                 'resource "inferenceservices"')
        if method == "POST":
            if key in self.objects:
                return self.status(409, "AlreadyExists", "already exists")
            obj = {**body, "metadata": {**body["metadata"], "generation": 1, "resourceVersion": str(self.version)}}
        else:
            old = self.objects[key]
            if body["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
                return self.status(409, "Conflict", "the object has been modified")
            obj = {**body, "status": old.get("status", {}),
                   "metadata": {**body["metadata"], "generation": old["metadata"]["generation"] + 1,
                                "resourceVersion": str(self.version)}}
        self.objects[key], self.reads[key] = obj, 0
        return (201 if method == "POST" else 200), obj

    def writes(self) -> list[tuple[str, dict]]:
        return [(m, b) for m, _, b in self.requests if m in ("POST", "PUT")]

    def client(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kube():
    made = []

    def make(**kwargs) -> KubeStandIn:
        made.append(KubeStandIn(**kwargs))
        return made[-1]

    yield make
    for stand_in in made:
        stand_in.close()


def published(run_outputs, tmp_path, registry: Path, tag: str = "", roots=None):  # noqa: F811
    out = tmp_path / f"publish{tag}"
    publish.run(run_outputs["report_dir"], roots or run_outputs["roots"], str(registry), "digits", out,
                dataset_dir=run_outputs["dataset"], latency_tolerance=100.0)
    return out


def deployed(publish_dir: Path, out: Path, stand_in: KubeStandIn | None, **settings) -> dict:
    settings = {"enabled": True, "deployment": "cpu-only", "timeout_s": 10.0, **settings}
    deploy.run(publish_dir, out, api_client=stand_in.client() if stand_in else None, **settings)
    return json.loads((out / deploy.DEPLOY_JSON).read_text())


def test_create_serves_the_chosen_variant_and_waits_until_ready(run_outputs, tmp_path, kube):  # noqa: F811
    registry, stand_in = tmp_path / "registry", kube()
    result = deployed(published(run_outputs, tmp_path, registry), tmp_path / "deploy", stand_in)
    cpu = result["targets"]["cpu"]
    assert cpu["decision"] == "created" and cpu["url"] == "http://digits-cpu.kfopt.example.com"
    assert result["targets"]["edge"]["decision"] == "not served" and "devices" in result["targets"]["edge"]["reason"]
    ((method, body),) = stand_in.writes()
    assert method == "POST" and body["metadata"]["name"] == "digits-cpu" and body["metadata"]["namespace"] == "kfopt"
    chosen = run_outputs["report"]["choices"]["cpu"]["chosen"]
    assert body["metadata"]["annotations"]["kfopt.dev/variant"] == chosen == cpu["variant"]
    predictor = body["spec"]["predictor"]
    card = json.loads((Path(cpu["uri"]) / "model_card.json").read_text())
    if card["variant"]["format"] == "onnx":
        assert predictor["model"]["storageUri"] == f"{cpu['uri']}/triton"
        assert predictor["model"]["runtime"] == isvc.TRITON_RUNTIME
    else:  # LiteRT and other formats without a KServe runtime: kfopt serve on the chosen variant's own files
        (container,) = predictor["containers"]
        assert container["args"][:4] == ["kfopt", "serve", "--variant", isvc.MODEL_DIR]
        assert container["env"] == [{"name": "STORAGE_URI", "value": f"{cpu['uri']}/model"}]
        assert container["image"].endswith("/kfopt-cpu:0.1.0")
        assert container["resources"]["limits"] == {"cpu": "8", "memory": "16Gi"}  # benchmark_cpu's profile
    written = yaml.safe_load((Path(cpu["uri"]) / "kserve" / "inferenceservice.yaml").read_text())
    assert written == body, "the GitOps copy in the registry is what was applied"
    assert yaml.safe_load((tmp_path / "deploy" / "inferenceservices" / "cpu.yaml").read_text()) == body


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_an_update_gets_the_canary_in_serverless_mode_only(run_outputs, tmp_path, kube, mode):  # noqa: F811
    registry, stand_in = tmp_path / "registry", kube()
    deployed(published(run_outputs, tmp_path, registry), tmp_path / "d1", stand_in, mode=mode)
    again = deployed(published(run_outputs, tmp_path, registry, "2"), tmp_path / "d2", stand_in, mode=mode)
    assert again["targets"]["cpu"]["decision"] == "unchanged", "a rerun that promoted nothing new changes nothing"
    assert [m for m, _ in stand_in.writes()] == ["POST"]
    roots = retrained_roots(run_outputs, tmp_path / "retrained", "r2")
    second = deployed(published(run_outputs, tmp_path, registry, "3", roots), tmp_path / "d3", stand_in,
                      mode=mode, canary_percent=10)
    cpu = second["targets"]["cpu"]
    assert cpu["decision"] == "updated" and cpu["version"] == 2
    method, body = stand_in.writes()[-1]
    assert method == "PUT" and body["metadata"]["annotations"]["kfopt.dev/model-version"] == "2"
    assert stand_in.objects[("kfopt", "digits-cpu")]["status"]["observedGeneration"] == 2, "waited for the update"
    if mode == "Serverless":
        assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10 and "10% of the traffic" in cpu["note"]
    else:
        assert "canaryTrafficPercent" not in body["spec"]["predictor"] and "no canary" in cpu["note"]


def test_never_ready_is_a_timeout_with_the_predictors_status(run_outputs, tmp_path, kube):  # noqa: F811
    stand_in = kube(ready_after=None, failure="Container kserve-container was OOMKilled")
    publish_dir = published(run_outputs, tmp_path, tmp_path / "registry")
    with pytest.raises(deploy.DeployError) as err:
        deployed(publish_dir, tmp_path / "deploy", stand_in, timeout_s=0.5)
    text = str(err.value)
    assert "InferenceService kfopt/digits-cpu was not Ready within 0.5 s" in text
    assert "PredictorReady=False (RevisionFailed: Container kserve-container was OOMKilled)" in text
    assert "ModelLoadFailed" in text and "deploy.timeout_s" in text
    assert not (tmp_path / "deploy").exists(), "no half-written output"


def test_kserve_not_installed_names_the_missing_crd(run_outputs, tmp_path, kube):  # noqa: F811
    stand_in = kube(kserve=False)
    with pytest.raises(deploy.DeployError, match=r"KServe is not installed.*inferenceservices\.serving\.kserve\.io"):
        deployed(published(run_outputs, tmp_path, tmp_path / "registry"), tmp_path / "deploy", stand_in)
    assert stand_in.writes() == []


def test_a_forbidden_create_names_the_rbac_fix(run_outputs, tmp_path, kube):  # noqa: F811
    stand_in = kube(forbid=True)
    with pytest.raises(ConfigError, match=r"refused to create InferenceService kfopt/digits-cpu \(.*cannot create "
                                          r"resource \"inferenceservices\"\); .*manifests/base/role.yaml"):
        deployed(published(run_outputs, tmp_path, tmp_path / "registry"), tmp_path / "deploy", stand_in)


def test_off_by_default_and_gitops_only_touch_no_cluster(run_outputs, tmp_path):  # noqa: F811
    publish_dir = published(run_outputs, tmp_path, tmp_path / "registry")
    deploy.run(publish_dir, tmp_path / "off")
    off = json.loads((tmp_path / "off" / deploy.DEPLOY_JSON).read_text())
    assert {r["decision"] for r in off["targets"].values()} == {"off"}
    gitops = deployed(publish_dir, tmp_path / "gitops", None, apply_manifests=False)
    assert gitops["applied"] is False and gitops["targets"]["cpu"]["decision"] == "written"
    assert Path(gitops["targets"]["cpu"]["manifest_uri"]).is_file()
    with pytest.raises(ConfigError, match="canary_percent must be in 1..100"):
        deployed(publish_dir, tmp_path / "bad", None, canary_percent=0)


def _as_gpu_tensorrt(cpu_uri: str, registry: Path, builder_version: str) -> dict:
    """A copy of the cpu promotion laid out as a gpu TensorRT one (no engine can be built here)."""
    folder = registry / "models" / "deployment_models" / "gpu" / "digits" / "v1"
    shutil.copytree(cpu_uri, folder)
    meta = json.loads((folder / "model" / "kfopt.json").read_text())
    meta.update(name="trt_fp16", format="tensorrt", runtime="tensorrt", target="gpu",
                extra={"builder": {"module": "tensorrt", "version": builder_version}})
    (folder / "model" / "kfopt.json").write_text(json.dumps(meta))
    card = json.loads((folder / "model_card.json").read_text())
    card["environment"]["hardware"] = "gpu"
    card["serving"] = {"triton": {"variant": "trt_fp16", "platform": "tensorrt_plan"}}
    (folder / "model_card.json").write_text(json.dumps(card))
    return {"decision": "promoted", "uri": str(folder), "variant": "trt_fp16", "serving_version": 1}


@pytest.mark.parametrize("builder, refused", [("10.11.0.33", False), ("10.3.0", True)])
def test_gpu_serves_the_plan_through_triton_only_with_the_images_tensorrt(run_outputs, tmp_path, builder,  # noqa: F811
                                                                           refused):
    registry = tmp_path / "registry"
    publish_dir = published(run_outputs, tmp_path, registry)
    pub = json.loads((publish_dir / "publish.json").read_text())
    pub["targets"]["gpu"] = _as_gpu_tensorrt(pub["targets"]["cpu"]["uri"], registry, builder)
    (publish_dir / "publish.json").write_text(json.dumps(pub))
    if refused:
        with pytest.raises(ConfigError, match=r"Not deploying \(nothing was applied\): gpu: trt_fp16 was built with "
                                              r"TensorRT 10.3.0, but the Triton image 25.06-py3 runs TensorRT 10.11"):
            deployed(publish_dir, tmp_path / "deploy", None, deployment="gke-gpu", apply_manifests=False)
        return
    result = deployed(publish_dir, tmp_path / "deploy", None, deployment="gke-gpu", apply_manifests=False)
    body = yaml.safe_load((tmp_path / "deploy" / "inferenceservices" / "gpu.yaml").read_text())
    predictor = body["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "tensorrt"}
    assert predictor["model"]["runtimeVersion"] == "25.06-py3"
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert predictor["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert result["targets"]["gpu"]["pool"] == "gpu"
    assert validate_with_schema(tmp_path / "deploy" / "inferenceservices" / "gpu.yaml", SCHEMA).returncode == 0


def test_rendered_inferenceservices_match_the_pinned_kserve_schema(run_outputs, tmp_path, kube):  # noqa: F811
    stand_in = kube()
    registry = tmp_path / "registry"
    deployed(published(run_outputs, tmp_path, registry), tmp_path / "d1", stand_in)
    roots = retrained_roots(run_outputs, tmp_path / "retrained", "s2")
    deployed(published(run_outputs, tmp_path, registry, "2", roots), tmp_path / "d2", stand_in, canary_percent=25)
    bodies = [b for _, b in stand_in.writes()]
    assert len(bodies) == 2
    for i, manifest in enumerate(bodies):
        path = tmp_path / f"isvc{i}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        result = validate_with_schema(path, SCHEMA)
        assert result.returncode == 0, result.stderr
    bodies[0]["spec"]["predictor"]["nodeSelecter"] = {"pool": "cpu"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bodies[0]))
    result = validate_with_schema(bad, SCHEMA)
    assert result.returncode != 0 and "nodeSelecter" in result.stderr


def _as_tpu_xla(cpu_uri: str, registry: Path) -> dict:
    """A copy of the cpu promotion laid out as a tpu XLA one (no TPU here to measure one on)."""
    folder = registry / "models" / "deployment_models" / "tpu" / "digits" / "v1"
    shutil.copytree(cpu_uri, folder)
    meta = json.loads((folder / "model" / "kfopt.json").read_text())
    meta.update(name="xla", format="xla", runtime="xla", target="tpu")
    (folder / "model" / "kfopt.json").write_text(json.dumps(meta))
    card = json.loads((folder / "model_card.json").read_text())
    card["environment"]["hardware"] = "tpu"
    (folder / "model_card.json").write_text(json.dumps(card))
    return {"decision": "promoted", "uri": str(folder), "variant": "xla", "serving_version": 1}


@pytest.mark.parametrize("deployment", ["gke-tpu", "cpu-only"])
def test_tpu_runs_kfopt_serve_on_the_tpu_pool_or_is_not_served_without_one(run_outputs, tmp_path,  # noqa: F811
                                                                          deployment):
    registry = tmp_path / "registry"
    publish_dir = published(run_outputs, tmp_path, registry)
    pub = json.loads((publish_dir / "publish.json").read_text())
    pub["targets"]["tpu"] = _as_tpu_xla(pub["targets"]["cpu"]["uri"], registry)
    (publish_dir / "publish.json").write_text(json.dumps(pub))
    result = deployed(publish_dir, tmp_path / "deploy", None, deployment=deployment, apply_manifests=False)
    tpu = result["targets"]["tpu"]
    if deployment == "cpu-only":
        assert tpu["decision"] == "not served" and "pool cpu, which has no tpu" in tpu["reason"]
        return
    (container,) = tpu["manifest"]["spec"]["predictor"]["containers"]
    assert container["image"].endswith("/kfopt-tpu:0.1.0") and container["args"][1] == "serve"
    assert container["resources"]["limits"]["google.com/tpu"] == "4"
    assert tpu["manifest"]["spec"]["predictor"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice", "cloud.google.com/gke-tpu-topology": "2x2"}
    assert validate_with_schema(tmp_path / "deploy" / "inferenceservices" / "tpu.yaml", SCHEMA).returncode == 0


def test_a_gcs_registry_gets_its_manifests_and_serves_from_gs(gcs, run_outputs, tmp_path):  # noqa: F811
    """Against the real GCS-protocol emulator: GitOps manifests land next to the model, and `kfopt serve`'s
    resolution downloads the promoted folder (checked against its manifest) and loads the same variant."""
    from kfopt import formats, serve, storage

    registry = gcs.uri("registry")
    result = deployed(published(run_outputs, tmp_path, registry), tmp_path / "deploy", None, apply_manifests=False)
    cpu = result["targets"]["cpu"]
    assert cpu["manifest_uri"] == f"{cpu['uri']}/kserve/inferenceservice.yaml" and cpu["uri"].startswith("gs://")
    manifest = yaml.safe_load(storage.read_text(cpu["manifest_uri"]))
    assert f"{cpu['uri']}/model" in json.dumps(manifest["spec"]["predictor"])
    served = serve.from_registry(registry, "digits", "cpu", tmp_path / "download")
    assert served.meta.name == cpu["variant"] and served.version == "1" and served.variant_dir.is_relative_to(tmp_path)
    assert formats.load(served.variant_dir).predict(np.zeros([2, *served.sample_shape], "float32")).shape[0] == 2
