"""A real GCS-protocol server for tests: gcp-storage-emulator, in memory, on a free local port.

`gcs` gives each test its own fresh bucket on one server per session (started on first use),
with STORAGE_EMULATOR_HOST pointing at it only while that test runs and kfopt.storage's cached
client reset around it. The emulator prints "Resource not found:" lines for every 404; harmless.
Known gap: the emulator ignores generation preconditions (ifGenerationMatch); kfopt.storage also
checks them on the client side, which is what tests against the emulator exercise.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid

import pytest

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


def _wait_for(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gcp-storage-emulator did not listen on port {port}") from None
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
