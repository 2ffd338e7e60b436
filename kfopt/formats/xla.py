"""XLA: one SavedModel holding a `jit_compile=True` serving function per fixed batch size.

XLA (and so a TPU) compiles a program for static shapes, so each configured batch size is its own
program: signature `serving_b<batch>`. Next to the SavedModel each program's StableHLO (bytecode and
text) and HLO text are kept, the portable forms other XLA toolchains take. The runner picks the
smallest program whose batch fits the input, pads with zeros and slices the padding off (the
models are per-sample at inference, so padding changes nothing); larger inputs go in chunks.

On a TPU node the runner and the XLA stage place the programs on the TPU; elsewhere they run
through XLA on the CPU: the same compiler front end, checked here.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant

DIRNAME = "saved_model"
PROGRAMS = "programs"


def signature_name(batch: int) -> str:
    return f"serving_b{batch}"


def export(model, variant_dir: Path, batch_sizes: list[int], input_spec: variant.TensorSpec,
           output_name: str) -> list[dict[str, Any]]:
    """Save the SavedModel and the StableHLO/HLO of each batch program; return the program list."""
    from kfopt.tfenv import tf

    t = tf()
    root = Path(variant_dir)
    (root / PROGRAMS).mkdir(parents=True, exist_ok=True)
    module = t.Module()
    module.model = model
    signatures, programs = {}, []
    for batch in sorted(set(batch_sizes)):
        spec = t.TensorSpec([batch, *input_spec.shape[1:]], t.float32, name=input_spec.name)
        serve = t.function(lambda x: {output_name: model(x, training=False)}, jit_compile=True, input_signature=[spec])
        start = time.perf_counter()
        ir = serve.experimental_get_compiler_ir(t.zeros(spec.shape))
        files = {"stablehlo": f"{PROGRAMS}/b{batch}.stablehlo.mlirbc", "stablehlo_text": f"{PROGRAMS}/b{batch}.stablehlo.mlir",
                 "hlo_text": f"{PROGRAMS}/b{batch}.hlo.txt"}
        (root / files["stablehlo"]).write_bytes(ir(stage="stablehlo_serialized"))
        (root / files["stablehlo_text"]).write_text(ir(stage="stablehlo"))
        (root / files["hlo_text"]).write_text(ir(stage="hlo"))
        setattr(module, f"serve_b{batch}", serve)
        signatures[signature_name(batch)] = serve
        programs.append({"batch": batch, "signature": signature_name(batch), "input_shape": list(spec.shape),
                         **files, "lowering_seconds": round(time.perf_counter() - start, 3)})
    signatures["serving_default"] = signatures[signature_name(programs[-1]["batch"])]
    t.saved_model.save(module, str(root / DIRNAME), signatures=signatures)
    return programs


def must_compile(fn) -> bool:
    """Whether a loaded serving function is marked for XLA (it then runs through XLA or fails)."""
    return any(node.attr["_XlaMustCompile"].b for node in fn.graph.as_graph_def().node
               if "_XlaMustCompile" in node.attr)


@functools.cache
def tpu_device() -> tuple[str | None, str]:
    """The TPU device to run on, or None; the second value says which device and why.

    Cached: the TPU system is initialised once per process (the stage and its verification share it).
    """
    from kfopt.formats import device_missing

    missing = device_missing("tpu")
    if missing:
        return None, missing
    from kfopt.tfenv import tf

    t = tf()
    try:
        resolver = t.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        t.config.experimental_connect_to_cluster(resolver)
        t.tpu.experimental.initialize_tpu_system(resolver)
        strategy = t.distribute.TPUStrategy(resolver)
        devices = t.config.list_logical_devices("TPU")
    except Exception as exc:  # noqa: BLE001 - any TPU runtime failure is reported, not hidden
        return None, f"a TPU device is present but TensorFlow could not initialise it ({exc})"
    if not devices:
        return None, "a TPU device is present but TensorFlow lists no logical TPU device"
    return devices[0].name, f"TPU via TPUStrategy ({strategy.num_replicas_in_sync} cores)"


class XlaRunner:
    def __init__(self, variant_dir: Path, meta: variant.VariantMeta, threads: int | None):
        from kfopt.tfenv import set_threads, tf

        t = tf()
        set_threads(threads)
        self.meta = meta
        self._tf = t
        self._device, _ = tpu_device()
        self._loaded = t.saved_model.load(str(Path(variant_dir) / DIRNAME))
        self._programs = sorted((p["batch"], self._loaded.signatures[p["signature"]]) for p in meta.extra["programs"])
        fn = self._programs[0][1]
        self._input = next(iter(fn.structured_input_signature[1]))
        self._output = next(iter(fn.structured_outputs))

    @property
    def device(self) -> str:
        return self._device or "CPU"

    @property
    def marked_for_xla(self) -> bool:
        return all(must_compile(fn) for _, fn in self._programs)

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        batch, fn = next((b, f) for b, f in self._programs if b >= n)
        if batch > n:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), np.float32)])
        if self._device:
            with self._tf.device(self._device):
                out = fn(**{self._input: self._tf.constant(x)})
        else:
            out = fn(**{self._input: self._tf.constant(x)})
        return out[self._output].numpy()[:n]

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        largest = self._programs[-1][0]
        if len(x) <= largest:
            return self._run(x)
        return np.concatenate([self._run(x[i:i + largest]) for i in range(0, len(x), largest)])


def load(variant_dir: Path, meta: variant.VariantMeta, threads: int | None = None) -> XlaRunner:
    return XlaRunner(variant_dir, meta, threads)
