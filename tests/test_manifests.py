"""Offline checks of everything that goes to the cluster: manifests/, images/ and their agreement.

No cluster and no Docker engine exist here, so these are the checks that can run anyway: kustomize
renders, kubernetes-validate (strict, Kubernetes 1.32) on the rendered output, pinned JSON schemas
for the Argo CD resources, checkov, yamllint and hadolint. The linters live in the tools venv
(.venv-tools, requirements/tools.txt; KFOPT_TOOLS_BIN overrides its bin/). A missing linter fails
the test; only kubectl, a system tool, may be absent (skip).
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kfopt import deployment

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
SCHEMAS = Path(__file__).parent / "schemas"
KUSTOMIZATIONS = {"base": "kfopt", "overlays/dev": "kfopt-dev", "overlays/gpu": "kfopt",
                  "overlays/tpu": "kfopt"}
#: Cluster-scoped prerequisites a cluster administrator applies once (no namespace, not part of an overlay).
CLUSTER_KUSTOMIZATIONS = ("trainer",)
EXPECTED_DEPLOYMENT = {"base": "gke", "overlays/dev": "cpu-only", "overlays/gpu": "gke-gpu",
                       "overlays/tpu": "gke-tpu"}
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
MY_YAML = ["config/deployment", "manifests", "tests/golden", ".yamllint"]


def tool(name: str) -> str:
    """Path of a checker from the tools venv; fails (not skips) with the fix when it is missing."""
    bin_dir = Path(os.environ.get("KFOPT_TOOLS_BIN") or ROOT / ".venv-tools" / "bin")
    path = bin_dir / name
    if not path.exists():
        pytest.fail(f"{name} is not in {bin_dir}; create the tools venv with `python3.11 -m venv "
                    ".venv-tools && .venv-tools/bin/pip install -r requirements/tools.txt` "
                    "(or set KFOPT_TOOLS_BIN).")
    return str(path)


def run(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """`kubectl kustomize` output of every kustomization, as parsed documents."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed, so kustomizations cannot be rendered here")
    result = {}
    for path in KUSTOMIZATIONS:
        out = run(kubectl, "kustomize", str(MANIFESTS / path))
        assert out.returncode == 0, f"kubectl kustomize {path} failed: {out.stderr}"
        result[path] = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return result


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def config_of(docs: list[dict]) -> dict:
    return by_kind(docs, "ConfigMap")[0]["data"]


def pod_spec(docs: list[dict]) -> dict:
    return by_kind(docs, "CronJob")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_every_kustomization_is_covered():
    found = {str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml")}
    assert found == set(KUSTOMIZATIONS) | set(CLUSTER_KUSTOMIZATIONS)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_render_has_the_expected_objects_in_one_namespace(rendered, path):
    docs = rendered[path]
    kinds = {doc["kind"] for doc in docs}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob",
            "NetworkPolicy"} <= kinds
    namespace = KUSTOMIZATIONS[path]
    assert by_kind(docs, "Namespace")[0]["metadata"]["name"] == namespace
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    binding = by_kind(docs, "RoleBinding")[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kfopt-pipeline-runner",
                                    "namespace": namespace}]
    account = by_kind(docs, "ServiceAccount")[0]
    assert re.fullmatch(r"[a-z0-9-]+@[a-z0-9-]+\.iam\.gserviceaccount\.com",
                        account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"])


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_rendered_output_passes_strict_kubernetes_validation(rendered, path, tmp_path):
    out_file = tmp_path / "rendered.yaml"
    out_file.write_text(yaml.safe_dump_all(rendered[path]))
    result = run(tool("kubernetes-validate"), "-k", "1.32", "--strict", str(out_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource cronjob/kfopt-retrain" in result.stdout


def test_strict_validation_rejects_a_misspelt_field(rendered, tmp_path):
    docs = json.loads(json.dumps(rendered["base"]))
    container = pod_spec(docs)["containers"][0]
    container["imagePulPolicy"] = container.pop("imagePullPolicy")
    out_file = tmp_path / "typo.yaml"
    out_file.write_text(yaml.safe_dump_all(docs))
    result = run(tool("kubernetes-validate"), "-k", "1.32", "--strict", str(out_file))
    assert result.returncode != 0 and "imagePulPolicy" in result.stdout + result.stderr


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_each_render_compiles_for_a_deployment_whose_accelerators_fit_its_quota(rendered, path):
    docs = rendered[path]
    name = config_of(docs)["KFOPT_DEPLOYMENT"]
    assert name == EXPECTED_DEPLOYMENT[path]
    placed = deployment.load(name)
    quota = {k: int(v) for doc in by_kind(docs, "ResourceQuota")
             for k, v in doc["spec"]["hard"].items()}
    for pool in placed.pools.values():
        if pool.accelerator and quota:
            assert quota[f"requests.{pool.accelerator.resource}"] >= pool.accelerator.count, pool
    if quota:
        used = {p.accelerator.resource for p in placed.pools.values() if p.accelerator}
        for key, value in quota.items():
            if value == 0:
                assert key.removeprefix("requests.") not in used, key


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_cronjob_is_hardened_and_submits_with_the_kfp_token(rendered, path):
    cronjob = by_kind(rendered[path], "CronJob")[0]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cronjob["spec"]["schedule"].split()) == 5, "Kubernetes cron has 5 fields"
    spec = pod_spec(rendered[path])
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in spec["initContainers"] + spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
        assert deployment.image_pin_problem(container["image"]) is None, container["image"]
    compile_args = spec["initContainers"][0]["args"]
    submit_args = spec["containers"][0]["args"]
    assert compile_args[:2] == ["kfopt", "compile"]
    config_path = compile_args[compile_args.index("--config") + 1]
    assert config_path == "/opt/kfopt/config/$(KFOPT_CONFIG).yaml"
    assert compile_args[compile_args.index("--deployment") + 1] == "$(KFOPT_DEPLOYMENT)"
    run_config = config_of(rendered[path])["KFOPT_CONFIG"]
    assert (ROOT / "config" / f"{run_config}.yaml").is_file(), run_config
    package = compile_args[compile_args.index("-o") + 1]
    assert submit_args[submit_args.index("--package") + 1] == package
    token_file = Path(submit_args[submit_args.index("--sa-token-path") + 1])
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert str(token_file.parent) == mounts["kfp-token"]
    projected = {v["name"]: v for v in spec["volumes"]}["kfp-token"]["projected"]["sources"][0]
    assert projected["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert projected["serviceAccountToken"]["path"] == token_file.name


def validate_with_schema(instance_file: Path, schema_file: Path) -> subprocess.CompletedProcess:
    """Validate a YAML file against a JSON schema with the tools venv's jsonschema."""
    code = ("import json, sys, yaml, jsonschema\n"
            "schema = json.load(open(sys.argv[2]))\n"
            "jsonschema.Draft7Validator.check_schema(schema)\n"
            "for doc in yaml.safe_load_all(open(sys.argv[1])):\n"
            "    jsonschema.validate(doc, schema)\n")
    return run(tool("python"), "-c", code, str(instance_file), str(schema_file))


@pytest.mark.parametrize("manifest, schema", [
    ("application.yaml", "argocd-application-v1alpha1.json"),
    ("appproject.yaml", "argocd-appproject-v1alpha1.json"),
])
def test_argocd_resources_match_pinned_schemas(manifest, schema):
    result = validate_with_schema(MANIFESTS / "argocd" / manifest, SCHEMAS / schema)
    assert result.returncode == 0, result.stderr


def test_argocd_schema_rejects_a_misspelt_key(tmp_path):
    app = yaml.safe_load((MANIFESTS / "argocd" / "application.yaml").read_text())
    app["spec"]["syncPolicy"]["automated"]["selfheal"] = True
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(app))
    result = validate_with_schema(path, SCHEMAS / "argocd-application-v1alpha1.json")
    assert result.returncode != 0 and "selfheal" in result.stderr


def test_argocd_application_points_at_an_overlay_its_project_allows():
    app = yaml.safe_load((MANIFESTS / "argocd" / "application.yaml").read_text())
    project = yaml.safe_load((MANIFESTS / "argocd" / "appproject.yaml").read_text())
    assert app["spec"]["project"] == project["metadata"]["name"]
    assert app["spec"]["source"]["repoURL"] in project["spec"]["sourceRepos"]
    assert (ROOT / app["spec"]["source"]["path"] / "kustomization.yaml").is_file()
    assert app["spec"]["destination"] in project["spec"]["destinations"]


def test_argocd_project_allows_every_kind_the_overlays_create(rendered):
    project = yaml.safe_load((MANIFESTS / "argocd" / "appproject.yaml").read_text())["spec"]
    allowed = {(g["group"], g["kind"]) for g in project["clusterResourceWhitelist"]
               + project["namespaceResourceWhitelist"]}
    for docs in rendered.values():
        for doc in docs:
            group = doc["apiVersion"].rpartition("/")[0]
            assert (group, doc["kind"]) in allowed, doc["kind"]
    namespaces = {d["namespace"] for d in project["destinations"]}
    assert set(KUSTOMIZATIONS.values()) <= namespaces


def test_checkov_passes_and_every_skip_has_a_reason(rendered):
    result = run(tool("checkov"), "--framework", "kustomize", "--skip-download", "-d",
                 str(MANIFESTS), "--quiet", "--compact", "-o", "json",
                 CKV_SKIP_PACKAGE_UPDATE_CHECK="true")
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = reports[0]["summary"]
    assert result.returncode == 0 and summary["failed"] == 0, result.stdout[-3000:]
    assert summary["passed"] > 50 and summary["resource_count"] >= 28
    for docs in rendered.values():
        for doc in docs:
            for key, value in doc["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 20, value


def test_yamllint_passes():
    result = run(tool("yamllint"), "--strict", "-c", ".yamllint", *MY_YAML)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    result = run(tool("hadolint"), str(dockerfile))
    assert result.returncode == 0, result.stdout


def test_hadolint_catches_an_unpinned_base(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = run(tool("hadolint"), str(bad))
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_there_is_one_dockerfile_per_node_pool():
    assert [p.parent.name for p in DOCKERFILES] == ["cpu", "gpu", "tpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerignore_lets_through_what_each_dockerfile_copies(dockerfile):
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                source = source.rstrip("/")
                assert any(source == a or source.startswith(a + "/") for a in allowed), source
                assert (ROOT / source).exists() or source == "README.md", source


def test_images_target_without_docker_fails_and_prints_the_commands():
    result = run("make", "-f", "images/images.mk", "images", "DOCKER=false",
                 "REGISTRY=registry.example/team", "TAG=9.9.9")
    assert result.returncode == 2
    assert "no Docker engine answers here" in result.stderr
    for pool in ("cpu", "gpu", "tpu"):
        assert (f"false build --platform linux/amd64 -f images/{pool}/Dockerfile "
                f"-t registry.example/team/kfopt-{pool}:9.9.9 .") in result.stderr


def test_image_tag_and_registry_agree_everywhere():
    """pyproject version = make TAG default = deployment tags = the CronJob image tag."""
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    registry = re.search(r"^REGISTRY \?= (.+)$", (ROOT / "images" / "images.mk").read_text(),
                         re.M)[1]
    make = run("make", "-f", "images/images.mk", "images", "DOCKER=false")
    assert f"-t {registry}/kfopt-cpu:{version} ." in make.stderr, "make's TAG default"
    for name in deployment.available():
        for pool in deployment.load(name).pools.values():
            assert pool.image == f"{registry}/kfopt-{pool.name}:{version}", (name, pool.image)
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert base["images"] == [{"name": "kfopt-cpu", "newName": f"{registry}/kfopt-cpu",
                               "newTag": version}]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_nothing_in_the_namespace_accepts_connections(rendered, path):
    policies = by_kind(rendered[path], "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]]
    assert deny and not deny[0]["spec"].get("ingress"), "a default-deny ingress policy for every pod"
    letting_in = [p for p in policies if p["spec"].get("ingress")]
    assert [p["metadata"]["name"] for p in letting_in] == ["kfopt-trainjob-nodes"], "no other policy lets connections in"
    jobset = [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]
    assert letting_in[0]["spec"]["podSelector"] == {"matchExpressions": jobset}
    assert letting_in[0]["spec"]["ingress"] == [{"from": [{"podSelector": {"matchExpressions": jobset}}]}], \
        "TrainJob nodes accept connections only from TrainJob nodes of the namespace"
    retrain = next(p for p in policies if p["metadata"]["name"] == "kfopt-retrain")
    ports = {port["port"] for rule in retrain["spec"]["egress"] for port in rule["ports"]}
    assert ports == {53, 8888}, "the submit pod reaches only DNS and the KFP API"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_rbac_is_least_privilege(rendered, path):
    docs = rendered[path]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    for rule in (rule for role in by_kind(docs, "Role") for rule in role["rules"]):
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert not {"secrets", "pods/exec", "serviceaccounts/token", "roles", "rolebindings"} & set(rule["resources"])
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    configmaps = [r for role in by_kind(docs, "Role") for r in role["rules"] if "configmaps" in r["resources"]]
    assert all(r.get("resourceNames") == ["kfp-launcher"] for r in configmaps), "only the launcher's ConfigMap"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_namespace_enforces_pod_security_and_reports_restricted(rendered, path):
    labels = by_kind(rendered[path], "Namespace")[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_pipeline_may_manage_inferenceservices_for_the_deploy_stage(rendered, path):
    """kfopt.deploy reads, creates and replaces InferenceServices (never deletes): exactly those verbs."""
    rules = [r for role in by_kind(rendered[path], "Role") for r in role["rules"]
             if "serving.kserve.io" in r["apiGroups"]]
    assert rules == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                      "verbs": ["get", "create", "update"]}]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_pipeline_may_create_and_follow_trainjobs_for_the_train_stage(rendered, path):
    """kfopt.trainjob creates and reads TrainJobs and reads its failed node pods' logs: exactly those verbs."""
    rules = [r for role in by_kind(rendered[path], "Role") for r in role["rules"]
             if "trainer.kubeflow.org" in r["apiGroups"] or {"pods", "pods/log"} & set(r["resources"])]
    assert rules == [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["get", "create"]},
                     {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                     {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]


@pytest.fixture(scope="module")
def tf_runtime() -> dict:
    """`kubectl kustomize manifests/trainer`: kfopt's one ClusterTrainingRuntime."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed, so kustomizations cannot be rendered here")
    out = run(kubectl, "kustomize", str(MANIFESTS / "trainer"))
    assert out.returncode == 0, out.stderr
    (doc,) = [d for d in yaml.safe_load_all(out.stdout) if d]
    return doc


def test_tensorflow_runtime_matches_the_pinned_crd_schema(tf_runtime, tmp_path):
    path = tmp_path / "runtime.yaml"
    path.write_text(yaml.safe_dump(tf_runtime))
    schema = SCHEMAS / "trainer-clustertrainingruntime-v1alpha1.json"
    result = validate_with_schema(path, schema)
    assert result.returncode == 0, result.stderr
    typo = json.loads(json.dumps(tf_runtime))
    typo["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["backofLimit"] = 0
    path.write_text(yaml.safe_dump(typo))
    result = validate_with_schema(path, schema)
    assert result.returncode != 0 and "backofLimit" in result.stderr


def test_tensorflow_runtime_job_template_is_a_strictly_valid_job(tf_runtime, tmp_path):
    """The replicated job's template as a batch/v1 Job, through kubernetes-validate (strict, 1.32)."""
    (job,) = tf_runtime["spec"]["template"]["spec"]["replicatedJobs"]
    out_file = tmp_path / "job.yaml"
    out_file.write_text(yaml.safe_dump({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "node"},
                                        "spec": job["template"]["spec"]}))
    result = run(tool("kubernetes-validate"), "-k", "1.32", "--strict", str(out_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_tensorflow_runtime_gives_keras_workers_what_tf_config_is_built_from(tf_runtime):
    """Runtime, TrainJob renderer and entry point agree: names, env, port, image, cluster scope."""
    from kfopt import trainjob
    from kfopt.models import keras_mwms

    assert tf_runtime["kind"] == "ClusterTrainingRuntime" and "namespace" not in tf_runtime["metadata"]
    assert tf_runtime["metadata"]["name"] == trainjob.RUNTIMES["keras"].name
    spec = tf_runtime["spec"]
    assert set(spec["mlPolicy"]) == {"numNodes"}, "a plain ML policy: Trainer has no TensorFlow plugin"
    assert spec["template"]["spec"]["network"]["enableDNSHostnames"] is True
    assert "subdomain" not in spec["template"]["spec"]["network"], "keras_mwms assumes the JobSet name"
    (job,) = spec["template"]["spec"]["replicatedJobs"]
    assert job["name"] == keras_mwms.REPLICATED_JOB == trainjob.NODE
    assert job["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert job["template"]["spec"]["backoffLimit"] == 0
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["name"] == trainjob.NODE
    assert container["image"] == deployment.load("gke").pools["gpu"].image
    env = {e["name"]: e for e in container["env"]}
    assert set(env) == {keras_mwms.TF_PORT, keras_mwms.NODE_INDEX, keras_mwms.JOBSET_NAME}
    assert [p["containerPort"] for p in container["ports"]] == [int(env[keras_mwms.TF_PORT]["value"])]
    assert env[keras_mwms.NODE_INDEX]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env[keras_mwms.JOBSET_NAME]["valueFrom"]["fieldRef"]["fieldPath"] == \
        f"metadata.labels['{trainjob.JOBSET_LABEL}']"
