"""`kfopt doctor` on this machine: real package metadata, the real nvidia-smi lookup, a real GCS
protocol server (tests/gcs_emulator.py), a closed local port for an unreachable KFP API and
Kubernetes API server.

Two tests answer from a tiny local HTTP server, because neither a Kubeflow Pipelines API server nor
a Kubernetes API server can exist here: the KFP health check (/apis/v2beta1/healthz) and the one
Kubernetes call the doctor makes (list CustomResourceDefinitions).
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kfopt import cli, doctor

REPO = Path(__file__).resolve().parent.parent
CLOSED = "http://127.0.0.1:9"


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def no_cluster(monkeypatch, tmp_path):
    """No kubeconfig, not in a pod, no KFP endpoint in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def test_this_machine_runs_locally_and_has_no_gpu_or_tpu(no_cluster):
    checks = by_name(doctor.run())
    ort = checks["ONNX Runtime"]
    assert ort.status == "ok" and ort.detail.startswith(importlib.metadata.version("onnxruntime"))
    assert "CPUExecutionProvider" in checks["ORT providers"].detail
    assert checks["Python"].status == "ok"
    if shutil.which("nvidia-smi") is None:
        gpu = checks["CUDA GPU"]
        assert gpu.status == "missing" and "no nvidia-smi" in gpu.detail and gpu.fix
    assert checks["TensorRT"].status == "ok" and "not run, without a GPU" in checks["TensorRT"].detail
    if not list(Path("/dev").glob("accel*")):
        assert checks["TPU"].status == "missing" and "compiles and verifies on CPU" in checks["TPU"].detail
    try:
        importlib.metadata.version("torch")
        assert checks["torch"].status == "ok"
    except importlib.metadata.PackageNotFoundError:
        assert checks["torch"].status == "missing" and checks["torch"].fix == "pip install torch==2.13.0"
    for name in ("bucket access", "KFP API", "Kubernetes"):
        assert checks[name].status == "skipped", checks[name]
    assert doctor.exit_code(list(checks.values())) == 0


def test_cli_prints_one_status_per_line_fast_and_without_tensorflow(no_cluster):
    code = ("import sys, time; t = time.perf_counter(); from kfopt import cli; rc = cli.main(['doctor']); "
            "print('SECONDS', time.perf_counter() - t); print('TF', 'tensorflow' in sys.modules); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=REPO, env={**os.environ, "HOME": os.environ["HOME"]})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("kfopt doctor")
    body = [line for line in lines[1:] if line.startswith("  ")]
    assert len(body) >= 15 and all(line.split()[0] in ("ok", "missing", "skipped") for line in body)
    assert "TF False" in lines, "doctor must read versions from metadata, not import TensorFlow"
    seconds = float(next(line for line in lines if line.startswith("SECONDS")).split()[1])
    assert seconds < 3.0, seconds


def test_an_environment_without_the_run_dependencies_exits_1():
    """The same interpreter without site-packages (-S): a real environment where nothing is installed."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from kfopt import doctor; "
            "checks = doctor.run(); print(doctor.render(checks)); sys.exit(doctor.exit_code(checks))")
    result = subprocess.run([sys.executable, "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "missing  TensorFlow" in result.stdout and "requirements/run.txt" in result.stdout
    assert "Not ready: TensorFlow" in result.stdout


def test_bucket_access_against_the_gcs_emulator(gcs, no_cluster):
    check = doctor.bucket_check(gcs.uri("pipeline-root"), timeout_s=5)
    assert check.status == "ok", check
    credentials = doctor.credentials_check()
    assert credentials.status == "ok" and gcs.url in credentials.detail
    from kfopt import storage

    assert not [n for n in storage.list_dir(gcs.uri()) if "kfopt-doctor" in n], "the probe object stayed"


def test_a_bucket_that_does_not_exist_is_missing_and_fails_the_exit_code(gcs, no_cluster):
    checks = doctor.run(bucket="gs://kfopt-no-such-bucket-here/x", timeout_s=5)
    bucket = by_name(checks)["bucket access"]
    assert bucket.status == "missing" and "NotFound" in bucket.detail and bucket.required
    assert doctor.exit_code(checks) == 1


def test_an_unreachable_kfp_host_is_missing_quickly(no_cluster):
    start = time.perf_counter()
    checks = doctor.run(host=CLOSED, timeout_s=2)
    check = by_name(checks)["KFP API"]
    assert time.perf_counter() - start < 3
    assert check.status == "missing" and "cannot reach" in check.detail and "refused" in check.detail
    assert doctor.exit_code(checks) == 1


def test_a_kfp_host_that_is_not_a_url_is_missing():
    check = doctor.kfp_host_check("localhost:8080", 1, asked=True)
    assert check.status == "missing" and "not an http(s) URL" in check.detail


def answering(path: str, body: dict):
    """A local HTTP server that answers GET `path` with `body` as JSON (404 elsewhere)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            ok = self.path.split("?")[0] == path
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body).encode() if ok else b"{}")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_kfp_host_that_answers_its_health_check_is_ok():
    server = answering("/apis/v2beta1/healthz", {"commit_sha": "abc123"})
    try:
        check = doctor.kfp_host_check(f"http://127.0.0.1:{server.server_port}", 2, asked=True)
    finally:
        server.shutdown()
    assert check.status == "ok" and "abc123" in check.detail


def kubeconfig(tmp_path: Path, server: str) -> Path:
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}]}))  # pragma: allowlist secret
    return config


def crd(name: str) -> dict:
    plural, _, group = name.partition(".")
    return {"metadata": {"name": name}, "spec": {
        "group": group, "scope": "Namespaced", "names": {"plural": plural, "kind": plural.title()},
        "versions": [{"name": "v1", "served": True, "storage": True}]}}


def test_crds_listed_from_the_cluster_name_the_missing_ones(tmp_path, monkeypatch, no_cluster):
    """The API server is a local stub answering the one list call (no cluster can exist here)."""
    server = answering("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinitionList", "metadata": {},
        "items": [crd("workflows.argoproj.io"), crd("scheduledworkflows.kubeflow.org")]})
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_port}")))
    try:
        checks = by_name(doctor.crd_checks(timeout_s=2))
    finally:
        server.shutdown()
    assert checks["Kubernetes"].status == "ok" and "2 CRDs" in checks["Kubernetes"].detail
    assert checks["CRD workflows.argoproj.io"].status == "ok"
    trainjob = checks["CRD trainjobs.trainer.kubeflow.org"]
    assert trainjob.status == "missing" and "Trainer" in trainjob.detail and trainjob.fix
    assert checks["CRD inferenceservices.serving.kserve.io"].status == "missing"


def test_a_kubeconfig_whose_cluster_is_unreachable_is_missing_quickly(tmp_path, monkeypatch, no_cluster):
    config = kubeconfig(tmp_path, "https://127.0.0.1:9")
    monkeypatch.setenv("KUBECONFIG", str(config))
    start = time.perf_counter()
    (check,) = doctor.crd_checks(timeout_s=2)
    assert time.perf_counter() - start < 3
    assert check.status == "missing" and "cannot list CRDs" in check.detail and str(config) in check.detail


def test_without_a_kubeconfig_the_crds_are_skipped_with_the_fix(no_cluster):
    (check,) = doctor.crd_checks(timeout_s=1)
    assert check.status == "skipped" and "get-credentials" in check.fix


def test_doctor_bad_bucket_uri_exits_1_with_the_reason(capsys, no_cluster):
    code = cli.main(["doctor", "--bucket", "gs://"])
    out = capsys.readouterr().out
    assert code == 1
    assert "missing  bucket access" in out and "no valid bucket name" in out
