"""kfopt submit / upload / schedule against a recording stand-in for the KFP API server.

The real KFP API server (ml-pipeline, with its MySQL, Argo and object store) cannot run on this
machine, so a small HTTP server on 127.0.0.1 stands in for it: it answers the v2beta1 REST calls
that kfp.Client 2.17 makes (paths from kfp_server_api) and records every request, so the tests can
assert the exact paths, queries and bodies the real kfp client sends. Everything else is real:
kfp.Client, kfp_server_api, the compiled package and the kfopt CLI handlers.
"""

import argparse
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from kfp import compiler, dsl
from kfp.client import Client

from kfopt import cli_cluster
from kfopt.errors import ConfigError, KfoptError

API = "/apis/v2beta1"


class StandInKfpApi(BaseHTTPRequestHandler):
    """Answers kfp.Client's REST calls from in-memory state and records them."""

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict, bytes]:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append({"method": self.command, "path": url.path, "query": query,
                                     "body": body,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})
        return url.path, query, body

    def do_GET(self):
        path, query, _ = self._record()
        state = self.server.state
        if path == f"{API}/healthz":
            return self._reply(200, {"multi_user": False})
        wanted = json.loads(query.get("filter", '{"predicates": [{}]}'))["predicates"][0]
        name = wanted.get("stringValue")
        if path == f"{API}/experiments":
            found = [{"experiment_id": i, "display_name": n}
                     for n, i in state["experiments"].items() if n == name]
            return self._reply(200, {"experiments": found} if found else {})
        if path == f"{API}/pipelines":
            found = [{"pipeline_id": i, "display_name": n}
                     for n, i in state["pipelines"].items() if n == name]
            found *= 2 if name in state["ambiguous"] else 1
            return self._reply(200, {"pipelines": found} if found else {})
        return self._reply(404, {"message": f"no route {path}"})

    def do_POST(self):
        path, query, body = self._record()
        state = self.server.state
        if path in state["fail"]:
            return self._reply(*state["fail"][path])
        if path == f"{API}/experiments":
            name = json.loads(body)["display_name"]
            state["experiments"][name] = f"exp-{len(state['experiments']) + 1}"
            return self._reply(200, {"experiment_id": state["experiments"][name],
                                     "display_name": name})
        if path == f"{API}/runs":
            return self._reply(200, {"run_id": "run-1", **json.loads(body)})
        if path == f"{API}/recurringruns":
            return self._reply(200, {"recurring_run_id": "rr-1", **json.loads(body)})
        if path == f"{API}/pipelines/upload":
            state["pipelines"][query["name"]] = "p-1"
            return self._reply(200, {"pipeline_id": "p-1", "display_name": query["name"]})
        if path == f"{API}/pipelines/upload_version":
            return self._reply(200, {"pipeline_id": query["pipelineid"],
                                     "pipeline_version_id": "v-2",
                                     "display_name": query["name"]})
        return self._reply(404, {"message": f"no route {path}"})


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    """Start the stand-in server; yield it (its .url, .requests and .state)."""
    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInKfpApi)
    server.requests = []
    server.state = {"experiments": {}, "pipelines": {}, "fail": {}, "ambiguous": set()}
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def package(tmp_path):
    """A tiny compiled pipeline with one parameter of each scalar type."""

    @dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
    def echo(epochs: int, lr: float, fast: bool, label: str) -> str:
        return f"{epochs} {lr} {fast} {label}"

    @dsl.pipeline(name="tiny-cluster")
    def tiny(epochs: int = 1, lr: float = 0.1, fast: bool = False, label: str = "a"):
        echo(epochs=epochs, lr=lr, fast=fast, label=label)

    path = tmp_path / "tiny.yaml"
    compiler.Compiler().compile(tiny, str(path))
    return path


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="kfopt")
    cli_cluster.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def calls(server, method: str, path: str) -> list[dict]:
    return [r for r in server.requests if r["method"] == method and r["path"] == f"{API}{path}"]


TYPED = ["--param", "epochs=3", "--param", "lr=0.5", "--param", "fast=true",
         "--param", "label=x y"]


def test_submit_creates_experiment_and_run_with_typed_parameters(kfp_api, package, capsys):
    code = run_cli("submit", "--host", kfp_api.url, "--package", str(package),
                   "--experiment", "nightly", "--run-name", "r1", "--existing-token", "tok",
                   "--service-account", "kfopt-pipeline-runner", *TYPED)
    assert code == 0
    assert "Submitted run run-1 of pipeline tiny-cluster." in capsys.readouterr().out
    assert calls(kfp_api, "GET", "/healthz")
    listed = calls(kfp_api, "GET", "/experiments")[0]
    assert json.loads(listed["query"]["filter"])["predicates"][0]["stringValue"] == "nightly"
    assert json.loads(calls(kfp_api, "POST", "/experiments")[0]["body"])["display_name"] == "nightly"
    run = calls(kfp_api, "POST", "/runs")[0]
    body = json.loads(run["body"])
    assert body["display_name"] == "r1"
    assert body["experiment_id"] == "exp-1"
    assert body["service_account"] == "kfopt-pipeline-runner"
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-cluster"
    assert body["runtime_config"]["parameters"] == {"epochs": 3, "lr": 0.5, "fast": True,
                                                    "label": "x y"}
    assert run["headers"]["authorization"] == "Bearer tok"


def test_submit_reuses_an_existing_experiment(kfp_api, package):
    kfp_api.state["experiments"]["nightly"] = "exp-7"
    run_cli("submit", "--host", kfp_api.url, "--package", str(package), "--experiment", "nightly")
    assert not calls(kfp_api, "POST", "/experiments")
    assert json.loads(calls(kfp_api, "POST", "/runs")[0]["body"])["experiment_id"] == "exp-7"


def test_upload_creates_pipeline_then_adds_a_version(kfp_api, package, capsys):
    assert run_cli("upload", "--host", kfp_api.url, "--package", str(package)) == 0
    first = calls(kfp_api, "POST", "/pipelines/upload")[0]
    assert first["query"]["name"] == "tiny-cluster"
    assert b'name="uploadfile"' in first["body"] and package.read_bytes() in first["body"]
    assert "Uploaded new pipeline p-1." in capsys.readouterr().out

    assert run_cli("upload", "--host", kfp_api.url, "--package", str(package)) == 0
    version = calls(kfp_api, "POST", "/pipelines/upload_version")[0]
    assert version["query"]["pipelineid"] == "p-1"
    assert version["query"]["name"].startswith("tiny-cluster-")
    assert len(version["query"]["name"]) == len("tiny-cluster-") + 12
    assert package.read_bytes() in version["body"]
    assert "Uploaded version v-2 of pipeline p-1." in capsys.readouterr().out

    run_cli("upload", "--host", kfp_api.url, "--package", str(package), "--version", "v9")
    assert calls(kfp_api, "POST", "/pipelines/upload_version")[1]["query"]["name"] == "v9"


def test_schedule_creates_a_recurring_run_without_catchup(kfp_api, package):
    code = run_cli("schedule", "--host", kfp_api.url, "--package", str(package),
                   "--cron", "0 0 3 * * *", "--experiment", "retrain", "--name", "nightly",
                   "--param", "epochs=5")
    assert code == 0
    body = json.loads(calls(kfp_api, "POST", "/recurringruns")[0]["body"])
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "nightly"
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {"epochs": 5}
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-cluster"


def test_schedule_catchup_flag_enables_backfill(kfp_api, package):
    run_cli("schedule", "--host", kfp_api.url, "--package", str(package),
            "--cron", "0 30 2 * * 1-5", "--catchup")
    body = json.loads(calls(kfp_api, "POST", "/recurringruns")[0]["body"])
    assert body["no_catchup"] is False
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1-5"


def test_five_field_cron_is_refused_with_the_fixed_example(kfp_api, package):
    with pytest.raises(ConfigError) as caught:
        run_cli("schedule", "--host", kfp_api.url, "--package", str(package),
                "--cron", "0 3 * * *")
    message = str(caught.value)
    assert "5 fields but KFP wants 6, seconds first" in message
    assert "'0 0 3 * * *'" in message
    assert kfp_api.requests == []


def test_malformed_cron_is_refused(kfp_api, package):
    with pytest.raises(ConfigError, match="is not a 6-field cron"):
        run_cli("schedule", "--host", kfp_api.url, "--package", str(package), "--cron", "daily")


def test_unknown_param_lists_the_valid_names(kfp_api, package):
    with pytest.raises(ConfigError, match=r"--param foo is not a parameter of pipeline "
                                          r"tiny-cluster; valid names: epochs, fast, label, lr\."):
        run_cli("submit", "--host", kfp_api.url, "--package", str(package), "--param", "foo=1")
    assert kfp_api.requests == []


@pytest.mark.parametrize("pair, message", [
    ("epochs=1.5", r"--param epochs=1.5 is not an integer, which the pipeline declares "
                   r"\(NUMBER_INTEGER\)"),
    ("lr=fast", r"--param lr=fast is not a number"),
    ("fast=yes", r"--param fast=yes is not true or false"),
    ("epochs", r"--param 'epochs' must look like NAME=VALUE"),
])
def test_param_values_are_checked_against_declared_types(kfp_api, package, pair, message):
    with pytest.raises(ConfigError, match=message):
        run_cli("submit", "--host", kfp_api.url, "--package", str(package), "--param", pair)


def test_unreachable_host_is_one_clear_error(package, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(KfoptError, match=rf"Cannot reach the KFP API at http://127.0.0.1:{port} "
                                         r"\(.*\); check the URL") as caught:
        run_cli("submit", "--host", f"http://127.0.0.1:{port}", "--package", str(package))
    assert caught.value.__suppress_context__
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "retry log noise"


def test_api_refusal_is_reported_with_the_server_message(kfp_api, package):
    kfp_api.state["fail"][f"{API}/runs"] = (403, {"message": "user not authorized"})
    with pytest.raises(KfoptError, match=r"answered 403 \(user not authorized\)"):
        run_cli("submit", "--host", kfp_api.url, "--package", str(package))


def test_ambiguous_pipeline_name_is_reported_without_traceback(kfp_api, package):
    kfp_api.state["pipelines"]["tiny-cluster"] = "p-1"
    kfp_api.state["ambiguous"].add("tiny-cluster")
    with pytest.raises(KfoptError, match=r"refused the request .*Multiple pipelines with the "
                                         r"name: tiny-cluster") as caught:
        run_cli("upload", "--host", kfp_api.url, "--package", str(package))
    assert caught.value.__suppress_context__
    assert not calls(kfp_api, "POST", "/pipelines/upload_version")


def test_missing_package_is_reported(kfp_api, tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml does not exist; compile it first"):
        run_cli("submit", "--host", kfp_api.url, "--package", str(tmp_path / "nope.yaml"))


def test_package_with_an_untagged_image_is_refused(kfp_api, tmp_path):
    @dsl.component(base_image="python", install_kfp_package=False)
    def hello() -> str:
        return "hi"

    @dsl.pipeline(name="untagged")
    def untagged():
        hello()

    path = tmp_path / "untagged.yaml"
    compiler.Compiler().compile(untagged, str(path))
    with pytest.raises(ConfigError, match=r"Image python of exec-hello in .* has no tag or "
                                          r"digest"):
        run_cli("upload", "--host", kfp_api.url, "--package", str(path))
    assert kfp_api.requests == []


def test_a_file_that_is_not_a_pipeline_is_refused(kfp_api, tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(ConfigError, match="is not a compiled KFP pipeline"):
        run_cli("upload", "--host", kfp_api.url, "--package", str(path))
