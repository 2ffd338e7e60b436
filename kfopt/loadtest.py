"""`kfopt loadtest`: a bounded load against `kfopt serve`, to show the served model is as fast as benchmarked.

The benchmark times the runner in-process; a user's traffic also pays for HTTP, JSON and the
server's scheduling. This starts the server (`kfopt serve`, its own process) on a free 127.0.0.1
port, times the same runner in-process at the same batch size (kfopt.bench.time_calls, the
benchmark's harness), then sends a fixed number of requests at each concurrency level from a pool
of threads (closed loop: each thread sends its next request when its last one is answered).

Reported per level: p50/p99 latency, throughput, errors (a non-200 answer or an answer that is not
the in-process runner's for the same input) and lost requests (no answer at all), and the serving
overhead: server p50 / in-process p50. The load generator shares the machine with the server, so on
few cores its own work is part of the figures; the report says how many cores there were.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import serve
from kfopt.errors import KfoptError

POOL = 16  # distinct request bodies, each with its expected answer
WARMUP = 20
READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(served: serve.Served, threads: int) -> tuple[subprocess.Popen, str]:
    """`kfopt serve --variant` in its own process; returns it and its base URL once it is ready."""
    import requests

    port = _free_port()
    argv = [sys.executable, "-m", "kfopt.cli", "serve", "--variant", str(served.variant_dir), "--name", served.name,
            "--port", str(port), "--max-batch", str(served.max_batch), "--threads", str(threads)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise KfoptError(f"kfopt serve exited with code {proc.returncode} before it was ready: "
                             f"{log.read().decode(errors='replace').strip()[-600:]}")
        try:
            if requests.get(f"{base}/v2/models/{served.name}/ready", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise KfoptError(f"kfopt serve was not ready within {READY_TIMEOUT_S:.0f} s on {base}.")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _payloads(served: serve.Served, runner, batch: int, binary: bool,
              seed: int = 0) -> list[tuple[bytes, dict[str, str], np.ndarray]]:
    """POOL request bodies with their headers and the in-process runner's answer to each."""
    rng = np.random.default_rng(seed)
    shape = [batch, *[d or 1 for d in served.sample_shape]]
    out = []
    for _ in range(POOL):
        x = rng.standard_normal(shape).astype(np.float32)
        tensor: dict[str, Any] = {"name": served.meta.input.name, "shape": shape, "datatype": "FP32"}
        if binary:  # the v2 binary tensor data extension: JSON header, then the raw little-endian FP32 bytes
            head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}]}).encode()
            headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
            body = head + x.astype("<f4").tobytes()
        else:
            headers = {"Content-Type": "application/json"}
            body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
        out.append((body, headers, runner.predict(x)))
    return out


def in_process_p50(runner, x: np.ndarray) -> float:
    from kfopt.bench import time_calls

    return time_calls(lambda: runner.predict(x), warmup=20, min_runs=30, max_seconds=2.0, target_ci=0.02)["p50_ms"]


def _same(answer, expected: np.ndarray) -> bool:
    """Whether a 200 answer holds the in-process runner's output for the same input."""
    try:
        data = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    return data.shape == (expected.size,) and np.allclose(data, expected.ravel(), atol=1e-5)


def _level(url: str, payloads: list[tuple[bytes, dict[str, str], np.ndarray]], concurrency: int,
           total: int) -> dict[str, Any]:
    import requests

    counter, lock = itertools.count(), threading.Lock()
    latencies: list[float] = []
    errors, lost = [0], [0]

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(counter)
            if i >= total:
                return
            body, headers, expected = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                answer = session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
            except requests.RequestException:
                with lock:
                    lost[0] += 1
                continue
            elapsed = time.perf_counter() - start
            good = answer.status_code == 200 and _same(answer, expected)
            with lock:
                if good:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": total, "ok": len(latencies), "errors": errors[0],
            "lost": lost[0], "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "throughput_rps": len(latencies) / wall if wall > 0 else None, "wall_s": wall}


def run(served: serve.Served, levels: list[int], requests_per_level: int, batch: int = 1,
        threads: int = 1, binary: bool = False) -> dict[str, Any]:
    """Start the server, measure the in-process p50, load each level; returns the figures."""
    import requests

    from kfopt import formats

    if batch > served.max_batch:
        raise KfoptError(f"--batch {batch} is larger than the model's maximum batch {served.max_batch}.")
    runner = formats.load(served.variant_dir, threads=threads or None)
    payloads = _payloads(served, runner, batch, binary)
    x = np.random.default_rng(1).standard_normal([batch, *[d or 1 for d in served.sample_shape]]).astype(np.float32)
    local_p50 = in_process_p50(runner, x)
    proc, base = start_server(served, threads)
    url = f"{base}/v2/models/{served.name}/infer"
    try:
        with requests.Session() as session:
            for body, headers, _ in payloads[:1] * WARMUP:
                session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
        rows = [_level(url, payloads, c, requests_per_level) for c in levels]
    finally:
        stop_server(proc)
    for row in rows:
        row["overhead"] = row["p50_ms"] / local_p50 if row["p50_ms"] and local_p50 > 0 else None
        row["samples_per_s"] = row["throughput_rps"] * batch if row["throughput_rps"] else None
    return {"model": served.name, "version": served.version, "variant": served.meta.name,
            "format": served.meta.format, "precision": served.meta.precision, "batch": batch, "threads": threads,
            "encoding": "binary" if binary else "json",
            "in_process_p50_ms": local_p50, "levels": rows, "cores": os.cpu_count(),
            "note": "load generator and server on the same machine"}


def text(result: dict[str, Any]) -> str:
    lines = [f"Load test: {result['model']} v{result['version']} ({result['variant']}: {result['format']} "
             f"{result['precision']}), batch {result['batch']}, {result['encoding']} tensors, "
             f"{result['threads']} runtime thread(s); {result['note']} ({result['cores']} cores)",
             f"In-process p50 (same runner, kfopt.bench harness): {result['in_process_p50_ms']:.3f} ms", "",
             f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'lost':>4} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'req/s':>8} {'overhead':>8}"]
    for r in result["levels"]:
        p50 = f"{r['p50_ms']:.3f}" if r["p50_ms"] is not None else "—"
        p99 = f"{r['p99_ms']:.3f}" if r["p99_ms"] is not None else "—"
        rps = f"{r['throughput_rps']:.1f}" if r["throughput_rps"] else "—"
        over = f"{r['overhead']:.1f}×" if r["overhead"] else "—"
        lines.append(f"{r['concurrency']:>11} {r['requests']:>8} {r['errors']:>6} {r['lost']:>4} {p50:>8} {p99:>8} "
                     f"{rps:>8} {over:>8}")
    return "\n".join(lines)


def run_cli(args) -> int:
    """`kfopt loadtest` (kfopt.cli_serve parses the arguments); exit 1 if any request failed or was lost."""
    with tempfile.TemporaryDirectory(prefix="kfopt-loadtest-") as tmp:
        if args.variant:
            served = serve.from_folder(Path(args.variant), None, args.max_batch)
        else:
            served = serve.from_registry(args.registry, args.model, args.target, Path(tmp), args.max_batch)
        result = run(served, args.concurrency, args.requests, args.batch, args.threads, args.binary)
    print(text(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    bad = sum(r["errors"] + r["lost"] for r in result["levels"])
    if bad:
        print(f"kfopt loadtest: {bad} request(s) failed or were lost", file=sys.stderr)
        return 1
    return 0
