"""A fault-injecting HTTP proxy on 127.0.0.1, put in front of a real GCS-protocol server in tests.

A test fixture, not a mock of GCS: every request that is not faulted goes to the real server
(gcp-storage-emulator or fake-gcs-server) and its real answer comes back. Rules pick requests by
method and path (a regular expression) and do one of:

- "503": answer 503 Service Unavailable with a GCS-style JSON error, as an overloaded frontend does;
- "drop": pass the request head and half of its body to the server, then close both connections
  without an answer (a connection lost in the middle of an upload);
- "lost_answer": pass the request on whole, let the server act on it, then close the client's
  connection without its answer (the request landed; the client cannot know);
- "stall": read the request and never answer (a hung backend), until the client gives up.

A rule applies to its first `times` matching requests (None: all of them) once `after` of them
have gone through, to a `share` of them (seeded, so a test is repeatable), or both. Each client connection carries one request
(`Connection: close` both ways), which keeps the proxy free of HTTP keep-alive bookkeeping.
Uploads larger than the client's resumable threshold (8 MiB) send their data to a session URL
that the server names: gcp-storage-emulator builds it from the request's Host (the proxy), while
fake-gcs-server returns its -external-url, which bypasses the proxy.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import socket
import socketserver
import threading

FAULTS = ("503", "drop", "lost_answer", "stall")


@dataclasses.dataclass
class Rule:
    kind: str
    method: str | None = None  # e.g. "POST"; None: any
    path: str | None = None  # regular expression searched in the request target; None: any
    times: int | None = 1  # how many matching requests to fault; None: no limit
    share: float = 1.0  # of the matching requests, this share is faulted (seeded draw)
    after: int = 0  # let this many matching requests through first

    def __post_init__(self):
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {FAULTS}")


@dataclasses.dataclass
class Seen:
    method: str
    target: str
    fault: str | None


def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """(head up to the blank line, whatever body bytes came with it); None if the client sent nothing."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            raise ValueError("fault_proxy handles Content-Length bodies only")
    return 0


def _with_close(head: bytes) -> bytes:
    """The head with its Connection header replaced by `Connection: close`."""
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close"])


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 0, stall_s: float = 30.0):
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.stall_s = stall_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._handle(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def add(self, kind: str, **match) -> Rule:
        rule = Rule(kind, **match)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    def faults(self, kind: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.fault and (kind is None or s.fault == kind)]

    def _pick(self, method: str, target: str) -> str | None:
        with self._lock:
            for rule in self.rules:
                if rule.method not in (None, method) or (rule.path and not re.search(rule.path, target)):
                    continue
                if rule.after > 0:
                    rule.after -= 1
                    continue
                if rule.times is not None and rule.times <= 0:
                    continue
                if self._rng.random() >= rule.share:
                    continue
                if rule.times is not None:
                    rule.times -= 1
                return rule.kind
        return None

    def _handle(self, client: socket.socket) -> None:
        got = _read_head(client)
        if got is None:
            return
        head, body = got
        method, target = head.split(b" ", 2)[:2]
        method, target = method.decode(), target.decode()
        length = _content_length(head)
        while len(body) < length:
            chunk = client.recv(65536)
            if not chunk:
                return
            body += chunk
        fault = self._pick(method, target)
        with self._lock:
            self.seen.append(Seen(method, target, fault))
        if fault == "503":
            payload = json.dumps({"error": {"code": 503, "message": "Service Unavailable (injected by fault_proxy)",
                                            "errors": [{"reason": "backendError"}]}}).encode()
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload))
            return
        if fault == "stall":
            self._stop.wait(self.stall_s)
            return
        with socket.create_connection(self.upstream, timeout=30) as server:
            if fault == "drop":
                server.sendall(_with_close(head) + b"\r\n\r\n" + body[: len(body) // 2])
                return
            server.sendall(_with_close(head) + b"\r\n\r\n" + body)
            answer = b""
            while chunk := server.recv(65536):
                answer += chunk
        if fault == "lost_answer":
            return
        reply_head, sep, reply_body = answer.partition(b"\r\n\r\n")
        client.sendall(_with_close(reply_head) + sep + reply_body)
