"""`kfopt serve` and `kfopt loadtest` for real: the CLI starts a uvicorn server in its own process on a free
127.0.0.1 port with variants exported from a model trained here (LiteRT and ONNX Runtime), and the tests
talk to it over HTTP with the Open Inference Protocol v2. Nothing is mocked; no timing is asserted.
"""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from kfopt import export, formats
from kfopt.data import dataset as ds_mod

STARTED = re.compile(r"→ (http://127\.0\.0\.1:\d+)/v2/models/(\S+)")


@pytest.fixture(scope="module")
def exported(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "exports"
    export.run(digits_small["baseline"], out)
    x_test, _ = ds_mod.read(digits_small["dataset"]).split("test")
    return {"tflite": out / "tflite_fp32", "onnx": out / "onnx_fp32", "x": x_test}


def start(*args: str, timeout: float = 60.0) -> tuple[subprocess.Popen, str, str]:
    """`kfopt serve ARGS --port 0`; returns the process, its base URL and model name once it is ready."""
    proc = subprocess.Popen([sys.executable, "-m", "kfopt.cli", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        match = STARTED.search(line)
        if match:
            base, name = match.groups()
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                        return proc, base, name
                except requests.ConnectionError:
                    time.sleep(0.1)
            break
    proc.kill()
    pytest.fail(f"kfopt serve did not start: {proc.stdout.read() if proc.stdout else ''}")


@pytest.fixture(scope="module")
def server(exported):
    proc, base, name = start("--variant", str(exported["tflite"]), "--name", "digits", "--max-batch", "16")
    yield {"base": base, "name": name, "infer": f"{base}/v2/models/{name}/infer"}
    proc.terminate()
    proc.wait(timeout=15)


def body(x: np.ndarray, name: str = "input", datatype: str = "FP32", shape=None) -> dict:
    return {"id": "req-1", "inputs": [{"name": name, "datatype": datatype, "shape": list(shape or x.shape),
                                       "data": x.ravel().tolist()}]}


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_v2_infer_answers_as_the_runner_does(exported, fmt):
    proc, base, name = start("--variant", str(exported[fmt]))
    try:
        x = exported["x"][:7]
        answer = requests.post(f"{base}/v2/models/{name}/infer", json=body(x), timeout=30)
        assert answer.status_code == 200, answer.text
        out = answer.json()
        assert out["model_name"] == name and out["id"] == "req-1"
        (tensor,) = out["outputs"]
        expected = formats.load(exported[fmt], threads=1).predict(x)
        assert tensor["shape"] == list(expected.shape) and tensor["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(tensor["data"]).reshape(expected.shape), expected, atol=1e-6)
        assert np.argmax(expected, axis=1).tolist() == np.argmax(np.array(tensor["data"]).reshape(7, -1), 1).tolist()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_health_readiness_and_metadata_from_kfopt_json(server, exported):
    base, name = server["base"], server["name"]
    assert requests.get(f"{base}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{base}/v2/models/{name}/ready", timeout=5).json()["ready"] is True
    meta = requests.get(f"{base}/v2/models/{name}", timeout=5).json()
    spec = json.loads((exported["tflite"] / "kfopt.json").read_text())
    assert meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"] == "kfopt_tflite"
    assert meta["inputs"] == [{"name": spec["input"]["name"], "datatype": "FP32",
                               "shape": [-1 if d is None else d for d in spec["input"]["shape"]]}]
    assert meta["outputs"][0]["shape"][-1] == spec["output"]["shape"][-1]
    assert meta["kfopt"]["variant"] == "tflite_fp32" and meta["kfopt"]["max_batch_size"] == 16
    missing = requests.get(f"{base}/v2/models/other", timeout=5)
    assert missing.status_code == 404 and "'digits'" in missing.json()["error"]


@pytest.mark.parametrize("change, status, reason", [
    (lambda b: b["inputs"][0].update(shape=[1, 64]), 400, "has rank 2; the model takes rank 4"),
    (lambda b: b["inputs"][0].update(shape=[1, 8, 9, 1]), 400, "dimension 2 is 9, the model takes 8"),
    (lambda b: b["inputs"][0].update(datatype="INT64"), 400, "datatype 'INT64'; the model takes FP32"),
    (lambda b: b["inputs"][0].update(data=[0.5] * 63), 400, "data has 63 values; shape [1, 8, 8, 1] needs 64"),
    (lambda b: b["inputs"][0].update(data=["a"] * 64), 400, "not a (rectangular) list of numbers"),
    (lambda b: b["inputs"][0].update(name="pixels"), 400, "unknown input 'pixels'"),
    (lambda b: b["inputs"].append(dict(b["inputs"][0])), 400, "exactly one input"),
    (lambda b: b["inputs"][0].update(shape=[17, 8, 8, 1], data=[0.0] * 17 * 64), 413,
     "batch 17 is larger than the model's maximum batch 16"),
])
def test_bad_requests_get_a_4xx_with_the_reason(server, exported, change, status, reason):
    request = body(exported["x"][:1])
    change(request)
    answer = requests.post(server["infer"], json=request, timeout=30)
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["error"]


def test_a_body_over_the_max_batch_is_413_and_garbage_is_400(server):
    huge = b'{"inputs": [' + b" " * (17 * 64 * 32 + 70_000) + b"]}"
    answer = requests.post(server["infer"], data=huge, headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413 and "maximum batch 16" in answer.json()["error"]
    answer = requests.post(server["infer"], data=b"{not json", timeout=30)
    assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
    assert requests.get(f"{server['base']}/v2/health/live", timeout=5).status_code == 200, "still serving"


def test_serve_without_a_promoted_model_or_on_a_taken_port_is_one_clear_error(tmp_path, server, exported):
    result = subprocess.run([sys.executable, "-m", "kfopt.cli", "serve", "--registry", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "No model is promoted for target cpu" in result.stderr
    port = server["base"].rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "kfopt.cli", "serve", "--variant", str(exported["tflite"]),
                             "--port", port], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"Cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_loadtest_gets_every_answer_right_at_each_concurrency(exported, binary):
    from kfopt import loadtest, serve

    served = serve.from_folder(exported["onnx"], "digits", 16)
    result = loadtest.run(served, [1, 3], requests_per_level=20, binary=binary)
    assert [r["concurrency"] for r in result["levels"]] == [1, 3]
    assert result["encoding"] == ("binary" if binary else "json")
    for row in result["levels"]:
        assert (row["ok"], row["errors"], row["lost"]) == (20, 0, 0), row
        assert row["p99_ms"] >= row["p50_ms"] > 0 and row["overhead"] > 0
    assert result["in_process_p50_ms"] > 0 and "Load test: digits v1" in loadtest.text(result)


def test_the_binary_tensor_extension_answers_as_json_does(server, exported):
    x = exported["x"][:3].astype("<f4")
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    binary = requests.post(server["infer"], data=head + x.tobytes(), headers=headers, timeout=30)
    as_json = requests.post(server["infer"], json=body(x), timeout=30)
    assert binary.status_code == 200, binary.text
    assert binary.json()["outputs"] == as_json.json()["outputs"]
    short = requests.post(server["infer"], data=head + x.tobytes()[:-4], headers=headers, timeout=30)
    assert short.status_code == 400
    assert f"binary_data_size is {x.nbytes} but {x.nbytes - 4} bytes" in short.json()["error"]
