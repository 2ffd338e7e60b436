"""`kfopt doctor`: what will run where on this machine, and what is missing, each with its fix.

One line per check: `ok`, `missing` or `skipped`, what it is (version, device, endpoint) and, when
it is not ok, what to do. Versions come from importlib.metadata, so nothing heavy is imported
(TensorFlow alone costs seconds); the network is touched only for the checks asked for (--bucket,
--host) or possible (a kubeconfig), each with a short timeout. The exit code is 0 when what a local
`kfopt run` needs is here and every check asked for by option passed, 1 otherwise.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

OK, MISSING, SKIPPED = "ok", "missing", "skipped"
RUN_DEPS_FIX = "pip install -r requirements/run.txt -c requirements/constraints.txt (or `make run`)"

#: Custom resources cluster mode uses: KFP (Argo workflows, recurring runs), Trainer v2, KServe.
CRDS = {
    "workflows.argoproj.io": "Kubeflow Pipelines runs (Argo Workflows)",
    "scheduledworkflows.kubeflow.org": "kfopt schedule (KFP recurring runs)",
    "trainjobs.trainer.kubeflow.org": "distributed training (Kubeflow Trainer v2 TrainJob)",
    "inferenceservices.serving.kserve.io": "serving the chosen variants (KServe)",
}


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the doctor's answer."""
    name: str
    status: str
    detail: str
    fix: str = ""
    required: bool = False  # needed by a local `kfopt run` (or asked for by option)

    def line(self, width: int) -> str:
        label = {MISSING: "fix", SKIPPED: "to check"}.get(self.status)
        fix = f" — {label}: {self.fix}" if self.fix and label else ""
        return f"  {self.status:<8} {self.name:<{width}} {self.detail}{fix}"


#: (label, distributions (first found wins), what it runs, needed by a local run, fix when missing)
PACKAGES = (
    ("TensorFlow", ("tensorflow", "tensorflow-cpu", "tensorflow-tpu"),
     "training, SavedModel, XLA programs", True, RUN_DEPS_FIX),
    ("tf-keras", ("tf-keras",), "Keras 2 models (TF_USE_LEGACY_KERAS=1)", True, RUN_DEPS_FIX),
    ("tfmot", ("tensorflow-model-optimization",), "pruning, quantization-aware training", True,
     RUN_DEPS_FIX),
    ("LiteRT", ("ai-edge-litert",), "TFLite variants (edge target, cpu benchmark)", True, RUN_DEPS_FIX),
    ("ONNX Runtime", ("onnxruntime", "onnxruntime-gpu"), "ONNX fp32/int8 variants (cpu target)", True,
     RUN_DEPS_FIX),
    ("tf2onnx", ("tf2onnx",), "Keras → ONNX export", True, RUN_DEPS_FIX),
    ("OpenVINO", ("openvino",), "OpenVINO IR variants (cpu target)", True, RUN_DEPS_FIX),
    ("NNCF", ("nncf",), "OpenVINO int8 quantization", True, RUN_DEPS_FIX),
    ("kfp", ("kfp",), "local runs (kfp.local), compile, submit", True, RUN_DEPS_FIX),
    ("kfp-kubernetes", ("kfp-kubernetes",), "node pools, tolerations, pod security in the package", True,
     RUN_DEPS_FIX),
    ("google-cloud-storage", ("google-cloud-storage",), "gs:// data, artifacts and registry", True,
     RUN_DEPS_FIX),
    ("torch", ("torch",), "torch training (framework: torch), .pt2 models, torch.compile / PT2E int8", False,
     RUN_DEPS_FIX),
    ("FastAPI + uvicorn", ("fastapi",), "kfopt serve (Open Inference Protocol v2)", False, RUN_DEPS_FIX),
)


def _reason(err: Exception) -> str:
    """An exception as one short phrase: urllib3 wraps the useful part in .reason."""
    inner = getattr(err, "reason", None) or err
    return f"{type(err).__name__}: {' '.join(str(inner).split())[:160]}"


def _version(distributions: tuple[str, ...]) -> tuple[str, str] | None:
    for name in distributions:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def python_check() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] == (3, 11):
        return Check("Python", OK, f"{version} ({sys.executable})", required=True)
    return Check("Python", MISSING, f"{version}; kfopt's pins are for Python 3.11", required=True,
                 fix="create the venv with python3.11 (make run PYTHON=/path/to/python3.11)")


def package_checks() -> list[Check]:
    checks = []
    for label, dists, role, required, fix in PACKAGES:
        found = _version(dists)
        if found:
            checks.append(Check(label, OK, f"{found[1]}: {role}", required=required))
        else:
            checks.append(Check(label, MISSING, f"not installed: {role}", fix, required))
    return checks


def onnxruntime_providers() -> Check:
    """Which ORT execution providers exist decides where ONNX variants run (CPU, CUDA, TensorRT)."""
    try:
        import onnxruntime
    except ImportError:
        return Check("ORT providers", SKIPPED, "onnxruntime is not installed", RUN_DEPS_FIX)
    providers = onnxruntime.get_available_providers()
    return Check("ORT providers", OK, ", ".join(providers))


def _nvidia_smi(timeout_s: float) -> tuple[list[str], str]:
    """GPU names and driver version from nvidia-smi, or ([], reason)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "no nvidia-smi on PATH (no NVIDIA driver here)"
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"nvidia-smi did not answer ({err})"
    gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not gpus:
        return [], f"nvidia-smi found no GPU ({(out.stderr or out.stdout).strip()[:120] or out.returncode})"
    return gpus, ""


def gpu_checks(timeout_s: float) -> list[Check]:
    gpus, reason = _nvidia_smi(timeout_s)
    on_cluster = "tensorrt and benchmark_gpu report themselves skipped here; they run on the cluster's GPU pool"
    if gpus:
        gpu = Check("CUDA GPU", OK, "; ".join(gpus) + ": tensorrt and benchmark_gpu run here")
    else:
        gpu = Check("CUDA GPU", MISSING, f"{reason}: {on_cluster}",
                    "none needed locally; for GPU stages use a machine with an NVIDIA driver or the GKE GPU pool")
    full = _version(("tensorrt", "tensorrt-cu12", "tensorrt-cu13"))
    rtx = _version(("tensorrt-rtx-cu12", "tensorrt-rtx", "tensorrt-rtx-cu13"))
    if full and gpus:
        trt = Check("TensorRT", OK, f"{full[0]} {full[1]}: engines are built and run on this GPU")
    elif full or rtx:
        name, version = full or rtx
        trt = Check("TensorRT", OK, f"{name} {version}: engines are built (parse/build proof), not run, "
                                    "without a GPU")
    else:
        trt = Check("TensorRT", MISSING, "not installed: the tensorrt stage reports itself skipped",
                    "pip install tensorrt-rtx-cu12==1.7.1.116 for the build proof; the gpu image has TensorRT")
    return [gpu, trt]


def tpu_check() -> Check:
    devices = sorted(glob.glob("/dev/accel*")) or (sorted(glob.glob("/dev/vfio/[0-9]*"))
                                                   if os.environ.get("TPU_ACCELERATOR_TYPE") else [])
    libtpu = _version(("libtpu", "libtpu-nightly"))
    if devices:
        return Check("TPU", OK, f"{len(devices)} device(s) ({', '.join(devices[:4])})"
                     + (f", libtpu {libtpu[1]}" if libtpu else ", but libtpu is not installed")
                     + ": xla and benchmark_tpu run here")
    return Check("TPU", MISSING, "no TPU device (/dev/accel*): the xla stage compiles and verifies on CPU, "
                                 "benchmark_tpu is skipped",
                 "none needed locally; TPU stages run on the cluster's TPU pool (kfopt-tpu image)")


def credentials_check() -> Check:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return Check("GCS credentials", OK, f"STORAGE_EMULATOR_HOST={emulator} (anonymous, emulator)")
    key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key:
        if Path(key).is_file():
            return Check("GCS credentials", OK, f"GOOGLE_APPLICATION_CREDENTIALS={key}")
        return Check("GCS credentials", MISSING, f"GOOGLE_APPLICATION_CREDENTIALS={key} does not exist",
                     "point it at a service-account key file, or unset it")
    adc = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud") \
        / "application_default_credentials.json"
    if adc.is_file():
        return Check("GCS credentials", OK, f"gcloud application-default credentials ({adc})")
    if Path("/var/run/secrets/kubernetes.io/serviceaccount").is_dir():
        return Check("GCS credentials", SKIPPED, "in a Kubernetes pod: Workload Identity (metadata server) "
                                                 "is used, not checked here")
    return Check("GCS credentials", MISSING, "none found: local paths work, gs:// URIs will not",
                 "gcloud auth application-default login (or GOOGLE_APPLICATION_CREDENTIALS)")


def bucket_check(uri: str | None, timeout_s: float) -> Check:
    """List the bucket and write + delete one small probe object, each call with a short timeout."""
    if not uri:
        return Check("bucket access", SKIPPED, "no --bucket given", "kfopt doctor --bucket gs://BUCKET/PATH")
    from kfopt import storage
    from kfopt.errors import StorageError

    try:
        bucket_name, prefix = storage.parse_gcs(uri)
        client = storage._client()
        bucket = client.bucket(bucket_name)
        list(client.list_blobs(bucket_name, prefix=prefix or None, max_results=1, timeout=timeout_s,
                               retry=None))
        probe = bucket.blob(f"{prefix.rstrip('/') + '/' if prefix else ''}.kfopt-doctor-{uuid.uuid4().hex}")
        probe.upload_from_string(b"kfopt doctor probe", timeout=timeout_s, retry=None)
        probe.delete(timeout=timeout_s, retry=None)
    except StorageError as err:
        return Check("bucket access", MISSING, str(err), "fix the URI", required=True)
    except Exception as err:  # noqa: BLE001 - google-cloud/auth/transport errors: report, don't crash
        return Check("bucket access", MISSING, f"{uri}: {_reason(err)}",
                     "check the bucket name, the credentials above and their roles (objects get/list/create/delete)",
                     required=True)
    finally:
        storage.reset_client()
    return Check("bucket access", OK, f"{uri}: list, write and delete work")


def kfp_host_check(host: str | None, timeout_s: float, asked: bool) -> Check:
    if not host:
        return Check("KFP API", SKIPPED, "no --host (nor $KF_PIPELINES_ENDPOINT) given",
                     "kfopt doctor --host http://localhost:8080 (through kubectl port-forward)")
    from kfopt import cluster
    from kfopt.errors import KfoptError

    try:
        cluster.check_host(host)
    except KfoptError as err:
        return Check("KFP API", MISSING, str(err), "pass an http(s) URL", required=asked)
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            body = answer.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return Check("KFP API", MISSING, f"{url} answered {err.code} {err.reason}",
                     "check the URL (the KFP API, not the UI) and the token", required=asked)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return Check("KFP API", MISSING, f"cannot reach {url} ({reason})",
                     "check the URL, the port-forward or the network", required=asked)
    try:
        version = json.loads(body).get("commit_sha") or json.loads(body).get("tag_name") or "healthy"
    except (ValueError, AttributeError):
        version = "answered"
    return Check("KFP API", OK, f"{host} ({version}): submit, upload and schedule can reach it")


def _kubeconfig() -> Path | None:
    for candidate in (os.environ.get("KUBECONFIG", "").split(os.pathsep)[0], Path.home() / ".kube" / "config"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def crd_checks(timeout_s: float) -> list[Check]:
    """The CRDs cluster mode needs, read from the cluster of the current kubeconfig context."""
    config = _kubeconfig()
    in_cluster = os.environ.get("KUBERNETES_SERVICE_HOST")
    if config is None and not in_cluster:
        return [Check("Kubernetes", SKIPPED, "no kubeconfig (~/.kube/config or $KUBECONFIG) and not in a pod",
                      "gcloud container clusters get-credentials CLUSTER (cluster mode only)")]
    from kubernetes import client, config as kube_config

    try:
        if config is not None:
            api_client = kube_config.new_client_from_config(config_file=str(config))
        else:
            kube_config.load_incluster_config()
            api_client = client.ApiClient()
        api_client.configuration.retries = 0
        api = client.ApiextensionsV1Api(api_client)
        names = {crd.metadata.name for crd in api.list_custom_resource_definition(
            _request_timeout=timeout_s).items}
    except Exception as err:  # noqa: BLE001 - config, auth, transport and API errors alike
        return [Check("Kubernetes", MISSING, f"cannot list CRDs with {config or 'the in-cluster config'} "
                                             f"({_reason(err)})",
                      "check the kubeconfig context, the network and RBAC (list customresourcedefinitions)")]
    host = api_client.configuration.host
    checks = [Check("Kubernetes", OK, f"{host}: {len(names)} CRDs")]
    for name, role in CRDS.items():
        if name in names:
            checks.append(Check(f"CRD {name}", OK, role))
        else:
            checks.append(Check(f"CRD {name}", MISSING, f"not installed: {role}",
                                "install that component on the cluster (see manifests/README.md)"))
    return checks


def run(bucket: str | None = None, host: str | None = None, timeout_s: float = 3.0) -> list[Check]:
    """Every check, in the order they are printed."""
    asked_host = host is not None
    host = host if asked_host else os.environ.get("KF_PIPELINES_ENDPOINT")
    return [python_check(), *package_checks(), onnxruntime_providers(), *gpu_checks(timeout_s), tpu_check(),
            credentials_check(), bucket_check(bucket, timeout_s), kfp_host_check(host, timeout_s, asked_host),
            *crd_checks(timeout_s)]


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.required and c.status != OK for c in checks) else 0


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    blockers = [c.name for c in checks if c.required and c.status != OK]
    verdict = ("Local run: ready (kfopt run has what it needs)." if not blockers
               else f"Not ready: {', '.join(blockers)}; see the fixes above.")
    return "\n".join(["kfopt doctor: what runs where on this machine", *(c.line(width) for c in checks), verdict])
