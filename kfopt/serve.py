"""`kfopt serve`: one variant behind the Open Inference Protocol v2 (the REST protocol of KServe and Triton).

The benchmark's figures are only worth something if the served model is the measured one, so the
server answers with the same runner the benchmark times (`kfopt.formats.load`), whatever the format.
LiteRT (TFLite), the usual cpu choice, has no KServe runtime: this server is what the kfopt predictor
image runs for such formats (kfopt.deploy), and what a user runs locally to try the promoted model.

The server library is FastAPI on uvicorn, the stack KServe's own Python model server is built on.
The `kserve` package itself (0.21.0) cannot be installed beside kfopt's pins: it needs
python-dateutil<3 (pinned 4.0.0) and psutil<6 (pinned 7.2.2) and pulls pandas and grpcio-tools.

Every request is checked against the variant's input spec (kfopt.json) before the runner sees it:
a wrong name, datatype, rank, dimension or value count is a 400 with the reason, a batch (or a body)
larger than the model's maximum batch a 413. The runner takes float32 features (int8 quantization
happens inside it), so the served input datatype is FP32 for every format. Input data comes as JSON
numbers or, with the protocol's binary tensor data extension, as raw FP32 bytes after the JSON header
(no text parsing, which is what large inputs need); answers are JSON.
"""

import dataclasses
import json
import math
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import __version__, storage, variant
from kfopt.errors import ArtifactError, ConfigError, KfoptError
from kfopt.registry import Registry

DEFAULT_MAX_BATCH = 64  # the largest batch the benchmark times by default (bench.batch_sizes)
BYTES_PER_VALUE = 32  # generous upper bound of one JSON number ("-0.12345678901234567,")
BODY_SLACK = 64 * 1024


@dataclasses.dataclass
class Served:
    """What one server serves: a variant folder under a model name and version."""

    name: str
    version: str
    variant_dir: Path
    meta: variant.VariantMeta
    max_batch: int
    source: str  # where it came from, for the start-up line

    @property
    def sample_shape(self) -> list[int | None]:
        return list(self.meta.input.shape[1:])

    def max_body_bytes(self) -> int:
        per_sample = math.prod(d or 1 for d in self.sample_shape)
        return self.max_batch * per_sample * BYTES_PER_VALUE + BODY_SLACK


class RequestError(Exception):
    """A request the model cannot take: `status` (4xx) and the reason sent back."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# --- what to serve ------------------------------------------------------------------------------------


def _max_batch(meta: variant.VariantMeta, card: dict[str, Any] | None, explicit: int | None) -> int:
    """The largest batch one request may carry: --max-batch, else a static batch, a TensorRT profile's
    maximum, the largest batch the card's benchmark measured, or DEFAULT_MAX_BATCH."""
    if explicit is not None:
        return explicit
    if meta.input.shape and meta.input.shape[0] is not None:
        return int(meta.input.shape[0])
    if meta.params.get("max_batch"):
        return int(meta.params["max_batch"])
    measured = [int(b) for b in ((card or {}).get("metrics") or {}).get("latency", {})]
    return max(measured, default=DEFAULT_MAX_BATCH)


def _latest_promoted(reg: Registry, target: str) -> tuple[str, int]:
    found = []
    for name in reg.names():
        promo = reg.promoted(target, name)
        if promo is not None:
            found.append((str(promo.record.get("created", "")), name, promo.version))
    if not found:
        raise KfoptError(f"No model is promoted for target {target} in the registry {reg.uri}; run `make run` "
                         "(or `kfopt run`) first, pass --registry, or serve a variant folder with --variant DIR.")
    _, name, version = max(found)
    return name, version


def _parse_ref(ref: str) -> tuple[str, int | None]:
    name, sep, version = ref.partition(":")
    if not sep:
        return name, None
    text = version.removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{ref!r}: the version after ':' must be a number such as 3 or v3 "
                          "(see `kfopt models list`).")
    return name, int(text)


def from_registry(registry_uri: str, ref: str | None, target: str, workdir: Path,
                  max_batch: int | None = None) -> Served:
    """The promoted version of `ref` (NAME or NAME:VERSION) on `target`; no ref: the last promoted model."""
    reg = Registry(registry_uri)
    if ref:
        name, version = _parse_ref(ref)
        if name not in reg.names():
            raise KfoptError(f"No model {name!r} in the registry {reg.uri}; known: {', '.join(reg.names()) or 'none'} "
                             "(see `kfopt models list`).")
    else:
        name, version = _latest_promoted(reg, target)
    if version is None:
        promo = reg.promoted(target, name)
        if promo is None:
            raise KfoptError(f"{name!r} has no promoted version on target {target} in {reg.uri}; pass NAME:VERSION "
                             "or another --target (see `kfopt models list`).")
        version, card = promo.version, reg.card(promo)
    else:
        card = reg.version_card(target, name, version)
        if card is None:
            raise KfoptError(f"{name!r} v{version} has no deployment on target {target} in {reg.uri} (only promoted "
                             "versions have one); see `kfopt models list`.")
    local = storage.fetch(reg.deployment(target, name, version), workdir)
    folder = Path(local) / "model"
    meta = variant.read(folder)
    return Served(name, str(version), folder, meta, _max_batch(meta, card, max_batch),
                  f"{reg.deployment(target, name, version)} ({meta.name})")


def from_folder(folder: Path, name: str | None = None, max_batch: int | None = None) -> Served:
    """A variant folder (one holding kfopt.json), served under `name` (default: the variant's own) as version 1."""
    if not (Path(folder) / "kfopt.json").is_file():
        raise ArtifactError(f"{folder} is not a variant folder (no kfopt.json); pass a folder a kfopt stage wrote, "
                            "e.g. runs/<run>/.../onnx_fp32.")
    meta = variant.read(Path(folder))
    return Served(name or meta.name, "1", Path(folder), meta, _max_batch(meta, None, max_batch), str(folder))


# --- the protocol ----------------------------------------------------------------------------------


def _v2_shape(shape: list[int | None]) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def metadata(served: Served) -> dict[str, Any]:
    """The v2 model metadata, from kfopt.json; `kfopt` adds what a caller of this model should know."""
    meta = served.meta
    return {"name": served.name, "versions": [served.version], "platform": f"kfopt_{meta.format}",
            "inputs": [{"name": meta.input.name, "datatype": "FP32", "shape": _v2_shape(meta.input.shape)}],
            "outputs": [{"name": meta.output.name, "datatype": "FP32", "shape": _v2_shape(meta.output.shape)}],
            "kfopt": {"variant": meta.name, "format": meta.format, "precision": meta.precision,
                      "runtime": meta.runtime, "technique": meta.technique, "parent": meta.parent,
                      "task": meta.task, "framework": meta.framework, "max_batch_size": served.max_batch,
                      "input_quantization": ({"dtype": meta.input.dtype, "scale": meta.input.scale,
                                              "zero_point": meta.input.zero_point}
                                             if meta.input.scale is not None else None)}}


def _check_shape(served: Served, shape: Any) -> list[int]:
    expected = served.meta.input.shape
    name = served.meta.input.name
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise RequestError(400, f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if len(shape) != len(expected):
        raise RequestError(400, f"input {name!r}: shape {shape} has rank {len(shape)}; the model takes rank "
                                f"{len(expected)}: {_v2_shape(expected)} (-1: any batch size)")
    if shape[0] < 1:
        raise RequestError(400, f"input {name!r}: the batch dimension is {shape[0]}; send at least one sample")
    if shape[0] > served.max_batch:
        raise RequestError(413, f"input {name!r}: batch {shape[0]} is larger than the model's maximum batch "
                                f"{served.max_batch}; split the request")
    for i, (got, want) in enumerate(zip(shape, expected)):
        if want is not None and got != want:
            raise RequestError(400, f"input {name!r}: dimension {i} is {got}, the model takes {want} "
                                    f"(shape {_v2_shape(expected)})")
    return shape


def _values(spec: variant.TensorSpec, tensor: dict[str, Any], shape: list[int], raw: bytes) -> np.ndarray:
    """The input's values: JSON `data`, or `binary_data_size` little-endian FP32 bytes after the JSON header."""
    need = math.prod(shape)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != len(raw):
            raise RequestError(400, f"input {spec.name!r}: binary_data_size is {size} but {len(raw)} bytes follow the "
                                    "JSON header (Inference-Header-Content-Length)")
        if size != need * 4:
            raise RequestError(400, f"input {spec.name!r}: {size} bytes of binary data; shape {shape} needs "
                                    f"{need * 4} (FP32)")
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    if raw:
        raise RequestError(400, f"{len(raw)} bytes follow the JSON header but no input has binary_data_size")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(400, f"input {spec.name!r}: data must be a list of numbers (flat or nested)")
    try:
        values = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise RequestError(400, f"input {spec.name!r}: data is not a (rectangular) list of numbers ({err})") from None
    if values.size != need:
        raise RequestError(400, f"input {spec.name!r}: data has {values.size} values; shape {shape} needs {need}")
    return values.reshape(shape)


def parse_request(served: Served, body: bytes, header_length: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A v2 infer request → (float32 batch shaped like the model's input, the request's JSON).

    `header_length` (the Inference-Header-Content-Length header of the binary tensor data extension):
    the JSON is that many leading bytes of the body and the input's data follows it as raw bytes.
    """
    if len(body) > served.max_body_bytes():
        raise _too_large(served, len(body))
    if header_length is not None and not 0 < header_length <= len(body):
        raise RequestError(400, f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} "
                                "bytes")
    head, raw = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the request body is not JSON ({err}); send a v2 infer request") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError(400, 'a v2 infer request is a JSON object with an "inputs" list')
    spec = served.meta.input
    if len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
        raise RequestError(400, f"the model takes exactly one input, {spec.name!r}; got {len(request['inputs'])}")
    tensor = request["inputs"][0]
    if tensor.get("name") != spec.name:
        raise RequestError(400, f"unknown input {tensor.get('name')!r}; the model's input is {spec.name!r}")
    if tensor.get("datatype") != "FP32":
        raise RequestError(400, f"input {spec.name!r} has datatype {tensor.get('datatype')!r}; the model takes FP32 "
                                "(float features; quantization happens inside the model)")
    shape = _check_shape(served, tensor.get("shape"))
    values = _values(spec, tensor, shape, raw)
    if not np.isfinite(values).all():
        raise RequestError(400, f"input {spec.name!r}: data holds NaN or infinite values")
    wanted = [o.get("name") for o in request.get("outputs") or [] if isinstance(o, dict)]
    if any(n != served.meta.output.name for n in wanted):
        raise RequestError(400, f"unknown output(s) {wanted}; the model's output is {served.meta.output.name!r}")
    return values, request


def _too_large(served: Served, size: int) -> RequestError:
    return RequestError(413, f"the request body is {size} bytes; the model's maximum batch {served.max_batch} "
                             f"allows at most {served.max_body_bytes()} bytes; split the request")


def response(served: Served, request: dict[str, Any], y: np.ndarray) -> dict[str, Any]:
    out = {"model_name": served.name, "model_version": served.version,
           "outputs": [{"name": served.meta.output.name, "datatype": "FP32", "shape": list(y.shape),
                        "data": np.asarray(y, dtype=np.float32).ravel().tolist()}]}
    if "id" in request:
        out["id"] = request["id"]
    return out


def make_app(served: Served, runner):
    """The FastAPI application: v2 health, server and model metadata, readiness and infer routes."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title=f"kfopt serve {served.name}", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    lock = threading.Lock()  # runtimes' interpreters (LiteRT) are not safe for concurrent calls

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    def known(model: str, version: str | None = None) -> JSONResponse | None:
        if model != served.name:
            return error(404, f"unknown model {model!r}; this server serves {served.name!r}")
        if version is not None and version != served.version:
            return error(404, f"{served.name!r} has no version {version!r}; it serves version {served.version}")
        return None

    @app.get("/v2/health/live")
    def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    @app.get("/v2")
    def server_metadata():
        return {"name": "kfopt", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    def model_metadata(model: str, version: str | None = None):
        return known(model, version) or metadata(served)

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    def model_ready(model: str, version: str | None = None):
        return known(model, version) or {"name": served.name, "ready": True}

    def predict(body: bytes, header_length: int | None) -> dict[str, Any]:
        x, request = parse_request(served, body, header_length)
        with lock:
            y = runner.predict(x)
        return response(served, request, y)

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str | None = None):
        refusal = known(model, version)
        if refusal is not None:
            return refusal
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > served.max_body_bytes():
            return error(413, _too_large(served, int(length)).reason)
        header = request.headers.get("inference-header-content-length")
        if header is not None and not header.isdigit():
            return error(400, f"Inference-Header-Content-Length {header!r} is not a byte count")
        body = await request.body()
        try:
            return await run_in_threadpool(predict, body, None if header is None else int(header))
        except RequestError as err:
            return error(err.status, err.reason)

    return app


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear error (port 0: any free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it the response body waits for the client's delayed ACK of
    # the headers (~40 ms on every keep-alive request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"Cannot listen on {host}:{port} ({err.strerror}); pass another --port.") from None
    sock.listen(128)
    return sock


def serve(served: Served, host: str = "127.0.0.1", port: int = 8080, threads: int = 1) -> None:
    """Load the runner, then answer requests until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    from kfopt import formats

    runner = formats.load(served.variant_dir, threads=threads or None)
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}/v2/models/{served.name}"
    print(f"kfopt serve: {served.name} v{served.version} ({served.meta.name}: {served.meta.format} "
          f"{served.meta.precision}, max batch {served.max_batch}) from {served.source} → {url}", flush=True)
    config = uvicorn.Config(make_app(served, runner), log_level="warning", access_log=False, timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=[sock])


def run_cli(args) -> int:
    """`kfopt serve` (kfopt.cli_serve parses the arguments)."""
    with tempfile.TemporaryDirectory(prefix="kfopt-serve-") as tmp:
        if args.variant:
            served = from_folder(Path(args.variant), args.name, args.max_batch)
        else:
            served = from_registry(args.registry, args.model, args.target, Path(tmp), args.max_batch)
            if args.name:
                served.name = args.name
        serve(served, args.host, args.port, args.threads)
    return 0
