"""TensorRT: strongly typed engines built from ONNX, and a runner that executes them on a GPU.

Precision comes from the graph, never from builder flags: recent TensorRT deprecates weakly typed
networks (the FP16/INT8 flags and INT8 calibrators) and TensorRT-RTX has only strongly typed ones.
So an FP16 engine is built from an ONNX graph converted to float16 (kfopt.accelerate.onnx_fp16) and
an INT8 engine from an explicit symmetric-QDQ graph.

The build code is written once against the Builder/OnnxParser API and runs with whichever module is
present: `tensorrt` (the GPU image, from NVIDIA's base image) or `tensorrt_rtx` (PyPI
`tensorrt-rtx-cu12`, which builds engines on a machine without a GPU but cannot run them there).
Every result records which module built it, so a CPU build proof is never mistaken for a
deployable engine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.errors import ConfigError, ModelError

MODULES = ("tensorrt", "tensorrt_rtx")  # preferred first
ENGINE_FILE = "model.engine"
PROOF_FILE = "NOT-DEPLOYABLE.build-proof.engine"  # an engine built without a GPU: evidence, not a model
TIMING_CACHE_FILE = "timing.cache"


def resolve(modules: tuple[str, ...] = MODULES) -> tuple[ModuleType | None, str | None]:
    """The first TensorRT module that imports, or None and why not."""
    for name in modules:
        try:
            return importlib.import_module(name), None
        except (ImportError, OSError):
            continue
    return None, f"TensorRT not installed (no {' or '.join(modules)} module)"


def builder_info(trt: ModuleType) -> dict[str, str]:
    return {"module": trt.__name__, "version": trt.__version__}


def check_profile(min_batch: int, opt_batch: int, max_batch: int) -> None:
    """The dynamic-batch optimization profile must satisfy 1 <= min <= opt <= max."""
    if min_batch < 1:
        raise ConfigError(f"TensorRT min_batch must be at least 1, got {min_batch}.")
    if min_batch > opt_batch:
        raise ConfigError(f"TensorRT min_batch ({min_batch}) is larger than opt_batch ({opt_batch}); "
                          "the profile needs min_batch <= opt_batch <= max_batch.")
    if opt_batch > max_batch:
        raise ConfigError(f"TensorRT opt_batch ({opt_batch}) is larger than max_batch ({max_batch}); "
                          "the profile needs min_batch <= opt_batch <= max_batch.")


def _logger(trt: ModuleType):
    """A TensorRT logger that keeps warnings and errors for the result instead of printing them."""

    class Collector(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(f"{severity.name}: {msg}")

    return Collector()


def parse_errors(parser) -> list[dict[str, Any]]:
    """Every error the ONNX parser recorded, one per offending node (not only the first)."""
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        code = getattr(err.code(), "name", str(err.code()))
        desc = err.desc()
        message = f"{code}: {desc}" if desc and desc != "false" else f"{code}: no TensorRT importer for this op"
        errors.append({"node": err.node(), "name": err.node_name(), "op_type": err.node_operator(), "message": message})
    return errors


def describe_parse_errors(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['name'] or '#' + str(e['node'])} ({e['op_type']}): {e['message']}" for e in errors)


def _profile(trt, builder, network, min_batch: int, opt_batch: int, max_batch: int):
    """One optimization profile over the batch dimension of every input; other dims must be static."""
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise ModelError(f"ONNX input {tensor.name!r} has shape {dims}: only the batch (first) dimension may be "
                             "dynamic for a TensorRT engine; export the model with fixed feature dimensions.")
        if dims and dims[0] < 0:
            shapes[tensor.name] = {k: [b, *dims[1:]] for k, b in
                                   (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}
            profile.set_shape(tensor.name, *(shapes[tensor.name][k] for k in ("min", "opt", "max")))
        else:
            shapes[tensor.name] = {"fixed": dims}
    return profile, shapes


def build_engine(onnx_path: Path, out_dir: Path, *, min_batch: int, opt_batch: int, max_batch: int,
                 workspace_mb: int, timing_cache_path: Path | None = None, engine_name: str = ENGINE_FILE,
                 module: ModuleType | None = None) -> dict[str, Any]:
    """Parse `onnx_path` into a strongly typed network and build a serialized engine into out_dir.

    Returns a result dict: builder module and version, `parsed`, `parse_errors` (every offending
    node: index, name, op type, message), the profile, `engine_file`/`engine_bytes` when built,
    build seconds, the timing cache's loaded/saved sizes, and the builder's warnings. A parse or
    build failure is a result (`engine_file` None), not an exception, so the caller can report it.
    """
    check_profile(min_batch, opt_batch, max_batch)
    if workspace_mb < 1:
        raise ConfigError(f"TensorRT workspace_mb must be at least 1, got {workspace_mb}.")
    trt = module
    if trt is None:
        trt, reason = resolve()
        if trt is None:
            raise ModelError(f"Cannot build a TensorRT engine: {reason}.")
    logger = _logger(trt)
    result: dict[str, Any] = {"builder": builder_info(trt), "onnx": Path(onnx_path).name, "parsed": False,
                              "parse_errors": [], "engine_file": None, "workspace_mb": workspace_mb}
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    result["parsed"] = bool(parser.parse_from_file(str(onnx_path)))
    if not result["parsed"]:
        result["parse_errors"] = parse_errors(parser)
        result["log"] = logger.messages[-20:]
        return result
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile, result["profile"] = _profile(trt, builder, network, min_batch, opt_batch, max_batch)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache_path) if timing_cache_path else None
    seed = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tensorrt_rtx: timing-cache calls are no-ops
        cache = config.create_timing_cache(seed)
        cache_accepted = bool(config.set_timing_cache(cache, ignore_mismatch=False))
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        result["build_seconds"] = round(time.perf_counter() - start, 3)
        cache_bytes = bytes(memoryview(config.get_timing_cache().serialize())) if cache_path else b""
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(cache_bytes)
        refused = any("timing cache will not be used" in m.lower() for m in logger.messages)
        result["timing_cache"] = {"file": cache_path.name, "loaded_bytes": len(seed),
                                  "used": bool(seed) and cache_accepted and not refused, "saved_bytes": len(cache_bytes)}
        if trt.__name__ == "tensorrt_rtx":
            result["timing_cache"]["note"] = "TensorRT-RTX picks tactics at run time on the GPU; its timing cache is inert"
    result["log"] = logger.messages[-20:]
    if serialized is None:
        errors = [m for m in logger.messages if m.startswith(("ERROR", "INTERNAL_ERROR"))]
        result["build_error"] = " | ".join(errors[-3:]) or "the builder returned no engine"
        return result
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    engine = Path(out_dir) / engine_name
    engine.write_bytes(memoryview(serialized))
    result.update(engine_file=engine_name, engine_bytes=engine.stat().st_size)
    return result


class _CudaRuntime:
    """The few CUDA runtime calls the runner needs, through libcudart with ctypes.

    libcudart ships with every CUDA/TensorRT base image (the GPU image has neither cuda-python nor
    torch), so the runner adds no dependency.
    """

    H2D, D2H = 1, 2

    def __init__(self):
        names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12", "libcudart.so.13"]
        for name in filter(None, names):
            try:
                self._lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise ModelError("The TensorRT runner needs the CUDA runtime (libcudart), which is not installed here.")
        self._lib.cudaGetErrorString.restype = ctypes.c_char_p
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        self.stream = stream.value or 0

    def _check(self, code: int, call: str) -> None:
        if code != 0:
            raise ModelError(f"CUDA {call} failed: {self._lib.cudaGetErrorString(code).decode()}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return ptr.value

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self._check(self._lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                              kind, ctypes.c_void_p(self.stream)), "cudaMemcpyAsync")

    def sync(self) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(self.stream)), "cudaStreamSynchronize")

    def free(self, ptr: int) -> None:
        self._lib.cudaFree(ctypes.c_void_p(ptr))


class TensorRTRunner:
    """Executes the engine on the GPU: bindings by tensor name, dynamic batch within the profile.

    Buffers are allocated once for the profile's max batch; a larger input is split into chunks,
    a smaller one than the profile's min batch is padded and the padding sliced off.
    """

    def __init__(self, variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None):
        builder = meta.extra.get("builder", {}).get("module", "tensorrt")
        trt, reason = resolve((builder,))
        if trt is None:
            raise ModelError(f"Variant {meta.name!r} was built by {builder}, which is not installed here: {reason}.")
        self.meta = meta
        self._trt = trt
        self._logger = _logger(trt)
        self._cuda = _CudaRuntime()
        runtime = trt.Runtime(self._logger)
        self._engine = runtime.deserialize_cuda_engine((Path(variant_dir) / ENGINE_FILE).read_bytes())
        if self._engine is None:
            raise ModelError(f"Variant {meta.name!r}: TensorRT could not load {ENGINE_FILE}: "
                             f"{' | '.join(self._logger.messages[-3:])}")
        self._runtime = runtime
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelError(f"Variant {meta.name!r}: the runner feeds one input tensor, the engine has {inputs}.")
        self._input = inputs[0]
        self._outputs = [n for n in names if n not in inputs]
        lo, _, hi = self._engine.get_tensor_profile_shape(self._input, 0)
        self._min, self._max = int(lo[0]), int(hi[0])
        self._buffers: dict[str, tuple[int, np.dtype]] = {}
        for name in names:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = list(self._engine.get_tensor_shape(name))
            per_sample = int(np.prod([d for d in shape[1:]], dtype=np.int64)) * dtype.itemsize
            ptr = self._cuda.malloc(per_sample * self._max)
            self._buffers[name] = (ptr, dtype)
            self._context.set_tensor_address(name, ptr)

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n < self._min:
            x = np.concatenate([x, np.zeros((self._min - n, *x.shape[1:]), x.dtype)])
        ptr, dtype = self._buffers[self._input]
        host_in = np.ascontiguousarray(x, dtype)
        self._context.set_input_shape(self._input, host_in.shape)
        self._cuda.copy(ptr, host_in.ctypes.data, host_in.nbytes, _CudaRuntime.H2D)
        if not self._context.execute_async_v3(self._cuda.stream):
            raise ModelError(f"Variant {self.meta.name!r}: TensorRT execution failed: "
                             f"{' | '.join(self._logger.messages[-3:])}")
        out_name = self._outputs[0]
        out_ptr, out_dtype = self._buffers[out_name]
        host_out = np.empty(tuple(self._context.get_tensor_shape(out_name)), out_dtype)
        self._cuda.copy(host_out.ctypes.data, out_ptr, host_out.nbytes, _CudaRuntime.D2H)
        self._cuda.sync()
        return host_out[:n].astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if len(x) <= self._max:
            return self._run(x)
        return np.concatenate([self._run(x[i:i + self._max]) for i in range(0, len(x), self._max)])

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self._cuda.free(ptr)


def load(variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None) -> TensorRTRunner:
    return TensorRTRunner(variant_dir, meta, threads)
