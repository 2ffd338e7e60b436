"""ORT static int8 of any ONNX fp32 variant, the fastest of a small declared search space that passes.

Which ORT int8 form is fastest depends on the model and the CPU: on a ResNet50 and a MobileNetV2 (issue
12) QOperator with uint8 activations and weights was 3× faster than fp32 while QDQ int8/int8 was
slower than fp32. So the pass tries each setting of `Config.search` (format QDQ/QOperator,
activation/weight types, per-channel, calibration MinMax/Entropy/Percentile), checks each against the
baseline (the in-stage check), times each briefly at batch 1 and the largest benchmark batch with the
benchmark's thread count, and keeps the fastest that passes (geometric mean of the p50s). Every point
tried is recorded in kfopt.json `extra["search"]`, the chosen settings in `params`.

The parent's model.onnx goes through quant_pre_process (shape inference and graph optimization) once,
then `quantize_static` on the stage's calibration samples. The models keep float input and output, so
the ONNX runner serves them as it serves fp32. When no setting passes, the accuracy-aware fallback
runs on the QDQ int8 form: it ranks nodes by how much each lowers the signal-to-quantization-noise
ratio of the activations against the fp32 model (onnxruntime.quantization.qdq_loss_debug) and excludes
the worst with `nodes_to_exclude`. kfopt.passes.ort_int8_trt is the same quantizer in the symmetric QDQ
form TensorRT parses, not searched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.errors import ConfigError
from kfopt.export import child_meta
from kfopt.formats import onnx as onnx_fmt
from kfopt.passes import Context, knob, lineage, technique
from kfopt.passes.check import KEY
from kfopt.passes.fallback import with_fallback

NAME = "ort_int8"
FORMAT, PRECISION, TARGET, TECHNIQUE = "onnx", "int8", "cpu", "quantize"
DEBUG_SAMPLES = 64  # samples the per-node error analysis runs on (it runs only when int8 misses its check)
_TYPES = {"S8": "int8", "U8": "uint8"}
_CALIBRATIONS = ("MinMax", "Entropy", "Percentile")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the search: what `quantize_static` is called with."""

    format: str = "QDQ"  # QDQ | QOperator
    activations: str = "int8"  # int8 | uint8
    weights: str = "int8"
    per_channel: bool = True
    calibration: str = "MinMax"  # MinMax | Entropy | Percentile
    percentile: float = 99.999  # Percentile calibration only: ORT's CalibPercentile

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """`"QOperator U8S8 per-channel Percentile"` (activations then weights; `per-tensor` for one scale per
        weight; `Percentile=99.99` for another percentile, in (50, 100])."""
        words = text.split()
        calibration, _, pct = (words[3] if len(words) == 4 else "").partition("=")
        ok = (len(words) == 4 and words[0] in ("QDQ", "QOperator") and len(words[1]) == 4
              and words[1][:2] in _TYPES and words[1][2:] in _TYPES and words[2] in ("per-channel", "per-tensor")
              and calibration in _CALIBRATIONS and (not pct or calibration == "Percentile" and _number(pct)))
        if not ok:
            raise ConfigError(f"quantize.ort_search entry {text!r} is not a setting: write '<QDQ|QOperator> "
                              f"<activations><weights: S8|U8, e.g. U8S8> <per-channel|per-tensor> "
                              f"<{'|'.join(_CALIBRATIONS)}>', e.g. 'QOperator U8U8 per-channel Percentile'.")
        return cls(words[0], _TYPES[words[1][:2]], _TYPES[words[1][2:]], words[2] == "per-channel", calibration,
                   float(pct) if pct else cls.percentile)

    def label(self) -> str:
        short = {v: k for k, v in _TYPES.items()}
        pct = f"={self.percentile:g}" if self.calibration == "Percentile" and self.percentile != Setting.percentile else ""
        return (f"{self.format} {short[self.activations]}{short[self.weights]} "
                f"{'per-channel' if self.per_channel else 'per-tensor'} {self.calibration}{pct}")

    def params(self) -> dict[str, Any]:
        out = {"format": self.format, "per_channel": self.per_channel, "activations": self.activations,
               "weights": self.weights, "calibration": self.calibration}
        return {**out, "percentile": self.percentile} if self.calibration == "Percentile" else out


def _number(text: str) -> bool:
    try:
        return 50 < float(text) <= 100  # ORT clips to [100 - p, p] percentiles
    except ValueError:
        return False


#: The QDQ int8/int8 MinMax form: the fallback's (its per-node analysis reads QDQ graphs) and the TensorRT form's.
QDQ_S8S8 = Setting()
#: The default space: small, so that `make run` stays short; the forms measured fastest on ResNet50/MobileNetV2.
SEARCH = ("QDQ S8S8 per-channel MinMax", "QOperator U8U8 per-channel Percentile", "QOperator U8S8 per-channel MinMax")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the ORT static int8 pass."""

    fallback_max_attempts: int = knob(3, "quantize.fallback_max_attempts",
                                      "Retries with the worst nodes excluded from quantization when int8 misses "
                                      "the in-stage check (0: no fallback).")
    search: tuple[str, ...] = knob(SEARCH, "quantize.ort_search",
                                   "ORT int8 settings tried, the fastest passing kept (empty: QDQ S8S8 only).")
    threads: int = knob(1, "bench.threads", "Intra-op threads the search times each setting with: the first "
                                                   "of the benchmark's thread counts.")
    batch_sizes: tuple[int, ...] = knob((1, 64), "bench.batch_sizes",
                                        "The search times each setting at the smallest and largest of these.")

    def __post_init__(self) -> None:
        if self.fallback_max_attempts < 0:
            raise ConfigError(f"fallback_max_attempts must be >= 0 (0 = no fallback), got {self.fallback_max_attempts}.")
        self.settings()  # a bad entry fails before anything is made

    def settings(self) -> list[Setting]:
        return [Setting.parse(text) for text in self.search]


def refusal(meta: variant.VariantMeta) -> str | None:
    """Any ONNX fp32 variant, whatever framework it came from (kfopt.json's format and precision)."""
    if meta.format != "onnx" or meta.precision != "fp32":
        return f"ORT static int8 quantizes an ONNX fp32 model; {meta.name} is {meta.format} {meta.precision}"
    return None


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}onnx_int8"


class _Reader:
    """ORT calibration reader over the calibration samples, in batches (a CalibrationDataReader by duck
    typing: ORT's base class accepts any object with get_next)."""

    def __init__(self, samples: np.ndarray, input_name: str, batch: int = 32):
        self._batches = iter([{input_name: samples[i:i + batch]} for i in range(0, len(samples), batch)])

    def get_next(self):
        return next(self._batches, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter(self.get_next, None)


def _even_batch(count: int, most: int = 32) -> int:
    """The largest calibration batch up to `most` that divides `count`: ORT's histogram calibrators (Entropy,
    Percentile) stack the batches' outputs and fail on a shorter last batch (200 samples: batches of 25)."""
    return max(b for b in range(1, min(most, count) + 1) if count % b == 0)


class Quantizer:
    """ORT static int8 of one preprocessed fp32 ONNX model in one `Setting`."""

    def __init__(self, float_path: Path, samples: np.ndarray, workdir: Path, extra_options: dict[str, Any] | None,
                 setting: Setting = QDQ_S8S8):
        import onnx

        self.float_path, self.samples, self.setting = Path(float_path), samples, setting
        self.extra_options = {**({"CalibPercentile": setting.percentile} if setting.calibration == "Percentile"
                                 else {}), **(extra_options or {})}
        self.workdir = Path(tempfile.mkdtemp(dir=workdir))
        self.input_name = onnx.load(str(float_path)).graph.input[0].name
        self._first: Path | None = None
        self._made = 0

    def convert(self, float_layers: list[str]) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        st = self.setting
        self._made += 1
        out = self.workdir / f"int8_{self._made}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print their progress
            quantize_static(str(self.float_path), str(out), _Reader(self.samples, self.input_name, _even_batch(
                len(self.samples))),
                            quant_format=QuantFormat.QDQ if st.format == "QDQ" else QuantFormat.QOperator,
                            per_channel=st.per_channel, activation_type=types[st.activations],
                            weight_type=types[st.weights], calibrate_method=getattr(CalibrationMethod, st.calibration),
                            nodes_to_exclude=list(float_layers) or None,
                            extra_options=dict(self.extra_options) if self.extra_options else None)
        if not float_layers and self._first is None:
            self._first = out
        return out

    def rank(self) -> list[tuple[str, float]]:
        """Quantized nodes worst first by the drop (dB) in activation SQNR vs fp32 across the node."""
        import onnx
        from onnxruntime.quantization import qdq_loss_debug as dbg

        first = self._first or self.convert([])
        aug_float, aug_qdq = self.workdir / "aug_float.onnx", self.workdir / "aug_qdq.onnx"
        dbg.modify_model_output_intermediate_tensors(str(self.float_path), str(aug_float))
        dbg.modify_model_output_intermediate_tensors(str(first), str(aug_qdq))
        samples = self.samples[:DEBUG_SAMPLES]
        activations = {path: dbg.collect_activations(str(path), _Reader(samples, self.input_name))
                       for path in (aug_float, aug_qdq)}
        matched = dbg.create_activation_matching(activations[aug_qdq], activations[aug_float])
        sqnr = {t: e["xmodel_err"] for t, e in dbg.compute_activation_error(matched).items() if "xmodel_err" in e}
        graph = onnx.load(str(first)).graph
        producer = {out: node for node in graph.node for out in node.output}

        def float_tensor(name: str) -> str | None:
            node = producer.get(name)
            if node is None or node.op_type != "DequantizeLinear":
                return name
            quant = producer.get(node.input[0])
            return quant.input[0] if quant is not None and quant.op_type == "QuantizeLinear" else None  # a weight

        ranking = []
        for node in graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            if not any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in node.input):
                continue  # not quantized
            inputs = [sqnr[t] for t in map(float_tensor, node.input) if t in sqnr]
            if inputs and node.output[0] in sqnr and min(inputs) - sqnr[node.output[0]] > 0:
                ranking.append((node.name, float(min(inputs) - sqnr[node.output[0]])))
        return sorted(ranking, key=lambda p: -p[1])


def preprocessed(parent_dir: Path, workdir: Path) -> Path:
    """The parent's ONNX through quant_pre_process (shape inference + graph optimization)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = Path(tempfile.mkdtemp(dir=workdir)) / "float_pre.onnx"
    quant_pre_process(str(Path(parent_dir) / onnx_fmt.FILENAME), str(pre))
    return pre


def quantize(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config, name: str, target: str,
             extra_options: dict[str, Any] | None, params: dict[str, Any],
             extra: dict[str, Any], pre: Path | None = None) -> variant.VariantMeta:
    """One QDQ int8 variant of the ONNX at `parent_dir` through the fallback; shared with the TensorRT form."""
    import onnx

    parent = variant.read(parent_dir)
    maker = Quantizer(pre or preprocessed(parent_dir, ctx.workdir), ctx.samples, ctx.workdir, extra_options)
    params = {**QDQ_S8S8.params(), "calibration_samples": len(ctx.samples), "preprocessed": "quant_pre_process",
              **params}

    def make(vdir: Path, float_layers: list[str]) -> variant.VariantMeta:
        meta = child_meta(parent, name, technique=technique(parent, TECHNIQUE), precision=PRECISION, target=target,
                          params=dict(params), extra=dict(extra))
        return onnx_fmt.write_variant(onnx.load(str(maker.convert(float_layers))), vdir, meta)

    return with_fallback(make, maker.rank, ctx.check.after(parent_dir), out_dir, cfg.fallback_max_attempts,
                         "drop in activation SQNR (dB) vs the fp32 model across the node")


def timing(variant_dir: Path, cfg: Config, x: np.ndarray) -> dict[str, float]:
    """p50 (ms) at the smallest and largest benchmark batch: a short in-process timing, enough to rank."""
    from kfopt import bench, formats

    runner = formats.load(variant_dir, threads=cfg.threads or None)
    out = {}
    for bs in sorted({min(cfg.batch_sizes), max(cfg.batch_sizes)}):
        batch = np.resize(x, (bs, *x.shape[1:])).astype(np.float32)
        out[str(bs)] = round(bench.time_calls(lambda: runner.predict(batch), warmup=3, min_runs=10, max_seconds=0.25,
                                              target_ci=0.05)["p50_ms"], 5)
    return out


def _score(latency: dict[str, float]) -> float:
    return math.exp(sum(math.log(v) for v in latency.values()) / len(latency))


def search(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config, name: str) -> variant.VariantMeta:
    """Every setting of `cfg.search`, checked and timed; the fastest that passes is kept at `out_dir`."""
    import onnx

    parent = variant.read(parent_dir)
    pre = preprocessed(parent_dir, ctx.workdir)
    check = ctx.check.after(parent_dir)
    x = ctx.check.x
    staging = Path(tempfile.mkdtemp(dir=ctx.workdir))
    found = ctx.search("ort_setting", "p50_ms", "fastest passing, geometric mean of the p50s")
    points = found.points
    results: list[dict[str, Any] | None] = []
    settings = cfg.settings()
    for i, setting in enumerate(settings):
        if found.spent():
            found.skip([s.label() for s in settings[i:]])
            break
        vdir = staging / str(i)
        started = time.monotonic()
        point = found.add(setting.label(), **setting.params())
        try:
            meta = child_meta(parent, name, technique=technique(parent, TECHNIQUE), precision=PRECISION,
                              target=TARGET, params={**setting.params(), "calibration_samples": len(ctx.samples),
                                                     "preprocessed": "quant_pre_process"})
            quantizer = Quantizer(pre, ctx.samples, ctx.workdir, None, setting)
            onnx_fmt.write_variant(onnx.load(str(quantizer.convert([]))), vdir, meta)
            result = check.check(vdir)
            point.update({"passed": result["passed"], "reason": result["reason"],
                          "accuracy_delta_pp": result["accuracy_delta_pp"], "agreement": result["agreement"],
                          "p50_ms": timing(vdir, cfg, x)})
            results.append(result)
        except Exception as exc:  # noqa: BLE001 - a setting ORT cannot make on this model is a point, not a crash
            point.update({"passed": False, "reason": f"could not be made: {exc}"})
            results.append(None)
        point["seconds"] = round(time.monotonic() - started, 2)
    passing = [i for i, p in enumerate(points) if p["passed"]]
    chosen = min(passing, key=lambda i: _score(points[i]["p50_ms"])) if passing else None
    record = found.record(None if chosen is None else points[chosen], checked_on=check.describe(),
                          budget_left_pp=round(check.budget_left_pp, 4), threads=cfg.threads,
                          parent_p50_ms=timing(parent_dir, cfg, x))
    try:
        if chosen is None:
            record["fallback"] = f"no setting passed: the accuracy-aware fallback ran on {QDQ_S8S8.label()}"
            meta = quantize(parent_dir, out_dir, ctx, cfg, name, TARGET, None, {}, {}, pre)
            meta.extra["search"] = record
            return variant.write(out_dir, meta)
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(str(staging / str(chosen)), str(out_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = variant.read(out_dir)
    meta.extra.update({KEY: results[chosen], "search": record})
    return variant.write(out_dir, meta)


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    parent = variant.read(parent_dir, verify=False)
    if not cfg.search:
        return quantize(parent_dir, out_dir, ctx, cfg, name_for(parent), TARGET, None, {}, {})
    return search(parent_dir, out_dir, ctx, cfg, name_for(parent))
