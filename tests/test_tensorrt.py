"""TensorRT stage: the ONNX graphs kfopt hands to TensorRT parse and build (proved with tensorrt_rtx,
which builds without a GPU), the per-node parse report, the profile, the timing cache, and the
explicit skipped results where no CUDA device or no TensorRT is present.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from kfopt import config, export, formats, variant
from kfopt.accelerate import onnx_fp16, tensorrt_stage
from kfopt.data import dataset as ds_mod
from kfopt.errors import ArtifactError, ConfigError
from kfopt.formats import tensorrt as trt_fmt

PROFILE = {"min_batch": 1, "opt_batch": 16, "max_batch": 64, "workspace_mb": 256}
NO_GPU = "no CUDA device on this node"


def rtx():
    return pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu12 (requirements/test.txt) is not installed")


@pytest.fixture(scope="module")
def exports(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "exports"
    export.run(digits_small["baseline"], out, tflite=False)
    return out


@pytest.fixture(scope="module")
def test_x(digits_small):
    return ds_mod.read(digits_small["dataset"]).split("test")[0]


@pytest.fixture(scope="module")
def quantized(exports, digits_small, tmp_path_factory):
    """A symmetric-QDQ int8 ONNX with float bias, as the quantize stage hands it to TensorRT."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    x = ds_mod.read(digits_small["dataset"]).split("train")[0][:128]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{"input": x[i:i + 32]} for i in range(0, len(x), 32)])

        def get_next(self):
            return next(self._batches, None)

    root = tmp_path_factory.mktemp("trt") / "quantized"
    vdir = root / "onnx_int8_trt"
    vdir.mkdir(parents=True)
    quantize_static(str(exports / "onnx_fp32" / "model.onnx"), str(vdir / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    parent = variant.read(exports / "onnx_fp32")
    variant.write(vdir, export.child_meta(parent, "onnx_int8_trt", precision="int8", technique="quantize",
                                          extra={"tensorrt_ready": True}))
    return root


def unparseable_onnx(path: Path) -> Path:
    """A real graph with two nodes TensorRT cannot import: a standard op it lacks (Det) and a custom-domain op."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["r"], name="relu"),
         helper.make_node("Det", ["r"], ["det"], name="determinant"),
         helper.make_node("FancyActivation", ["r"], ["fancy"], name="custom_act", domain="com.example"),
         helper.make_node("Identity", ["fancy"], ["output"], name="out")],
        "unparseable", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 4]),
         helper.make_tensor_value_info("det", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ort_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_fp16_conversion_keeps_float32_io_and_sensitive_ops(exports, test_x, tmp_path):
    import onnx

    model, summary = onnx_fp16.convert(onnx.load(str(exports / "onnx_fp32" / "model.onnx")))
    assert summary["kept_float32_ops"] == ["Softmax"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    onnx.save(model, str(tmp_path / "fp16.onnx"))
    fp32, fp16 = ort_predict(exports / "onnx_fp32" / "model.onnx", test_x), ort_predict(tmp_path / "fp16.onnx", test_x)
    assert fp16.dtype == np.float32
    assert np.abs(fp16 - fp32).max() < 1e-2
    assert (fp16.argmax(1) == fp32.argmax(1)).mean() >= 0.99


def test_fp16_conversion_with_a_float32_op_last(tmp_path):
    """MatMul → Add → Sigmoid (a binary classifier's head): Sigmoid stays float32 and so does the output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(30, 1)).astype(np.float32), np.array([0.1], np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["output"])], "head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    converted, summary = onnx_fp16.convert(model)
    assert summary == {"kept_float32_ops": ["Sigmoid"], "casts_inserted": 2, "values_clipped_to_fp16_range": 0}
    assert [n.op_type for n in converted.graph.node] == ["Cast", "MatMul", "Add", "Cast", "Sigmoid"]
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    onnx.save(converted, str(tmp_path / "fp16.onnx"))
    x = rng.normal(size=(16, 30)).astype(np.float32)
    fp16 = ort_predict(tmp_path / "fp16.onnx", x)
    assert fp16.dtype == np.float32 and np.abs(fp16 - ort_predict(tmp_path / "fp32.onnx", x)).max() < 1e-2


def test_fp16_conversion_refuses_a_quantized_graph(quantized):
    import onnx

    with pytest.raises(Exception, match="already quantized"):
        onnx_fp16.convert(onnx.load(str(quantized / "onnx_int8_trt" / "model.onnx")))


def test_build_fp16_engine_with_profile(exports, tmp_path):
    trt = rtx()
    import onnx

    model, _ = onnx_fp16.convert(onnx.load(str(exports / "onnx_fp32" / "model.onnx")))
    onnx.save(model, str(tmp_path / "fp16.onnx"))
    result = trt_fmt.build_engine(tmp_path / "fp16.onnx", tmp_path / "out", **PROFILE, module=trt)
    assert result["parsed"] and result["parse_errors"] == []
    assert result["builder"] == {"module": "tensorrt_rtx", "version": trt.__version__}
    assert result["profile"]["input"] == {"min": [1, 8, 8, 1], "opt": [16, 8, 8, 1], "max": [64, 8, 8, 1]}
    engine = tmp_path / "out" / trt_fmt.ENGINE_FILE
    assert engine.stat().st_size == result["engine_bytes"] > 10_000


def test_build_int8_engine_from_symmetric_qdq(quantized, tmp_path):
    trt = rtx()
    result = trt_fmt.build_engine(quantized / "onnx_int8_trt" / "model.onnx", tmp_path, **PROFILE, module=trt)
    assert result["parsed"] and result["engine_bytes"] > 10_000


def test_timing_cache_written_and_reused(exports, tmp_path):
    trt = rtx()
    cache = tmp_path / trt_fmt.TIMING_CACHE_FILE
    onnx_path = exports / "onnx_fp32" / "model.onnx"
    first = trt_fmt.build_engine(onnx_path, tmp_path / "a", **PROFILE, timing_cache_path=cache, module=trt)
    assert cache.is_file() and cache.stat().st_size == first["timing_cache"]["saved_bytes"] > 0
    assert first["timing_cache"]["loaded_bytes"] == 0 and not first["timing_cache"]["used"]
    second = trt_fmt.build_engine(onnx_path, tmp_path / "b", **PROFILE, timing_cache_path=cache, module=trt)
    assert second["timing_cache"]["loaded_bytes"] == first["timing_cache"]["saved_bytes"]
    assert second["engine_file"] is not None
    if trt.__name__ == "tensorrt_rtx":  # it reads the cache but tunes at run time: said so, not hidden
        assert "inert" in second["timing_cache"]["note"]


@pytest.mark.parametrize("profile, match", [
    ({"min_batch": 8, "opt_batch": 4, "max_batch": 64}, r"min_batch \(8\) is larger than opt_batch \(4\)"),
    ({"min_batch": 1, "opt_batch": 128, "max_batch": 64}, r"opt_batch \(128\) is larger than max_batch \(64\)"),
    ({"min_batch": 0, "opt_batch": 4, "max_batch": 64}, "at least 1"),
])
def test_bad_profile_is_a_clear_error(profile, match, exports, tmp_path):
    with pytest.raises(ConfigError, match=match):
        trt_fmt.build_engine(exports / "onnx_fp32" / "model.onnx", tmp_path, workspace_mb=64, **profile)
    with pytest.raises(ConfigError, match=match):
        tensorrt_stage.run(exports, tmp_path / "set", **profile)
    assert not (tmp_path / "set").exists()


def test_bad_profile_in_config():
    with pytest.raises(ConfigError, match="min_batch <= opt_batch <= max_batch, got min_batch 8, opt_batch 4"):
        config.from_dict({"tensorrt": {"min_batch": 8, "opt_batch": 4}})
    with pytest.raises(ConfigError, match="xla.batch_sizes"):
        config.from_dict({"xla": {"batch_sizes": [0]}})


def test_parse_report_lists_every_unsupported_node(tmp_path):
    trt = rtx()
    result = trt_fmt.build_engine(unparseable_onnx(tmp_path / "bad.onnx"), tmp_path, **PROFILE, module=trt)
    assert not result["parsed"] and result["engine_file"] is None
    assert [(e["name"], e["op_type"]) for e in result["parse_errors"]] == [
        ("determinant", "Det"), ("custom_act", "FancyActivation")]
    assert all(e["message"] for e in result["parse_errors"])
    assert "Plugin not found" in result["parse_errors"][1]["message"]
    assert not list(tmp_path.glob("*.engine"))


def test_stage_reports_unparseable_graph_per_node(tmp_path, monkeypatch):
    rtx()
    monkeypatch.setattr(formats, "device_missing", lambda hw: NO_GPU)
    src = tmp_path / "exports" / "onnx_fp32"
    src.mkdir(parents=True)
    unparseable_onnx(src / "model.onnx")
    spec = variant.TensorSpec("input", [None, 4, 4])
    variant.write(src, variant.VariantMeta("onnx_fp32", "onnx", "fp32", "cpu", spec, spec))
    tensorrt_stage.run(tmp_path / "exports", tmp_path / "set", **PROFILE)
    meta = variant.read(tmp_path / "set" / "trt_fp16")
    assert meta.skipped and "cannot parse onnx_fp32: 2 unsupported node(s)" in meta.reason
    assert "determinant (Det)" in meta.reason and "custom_act (FancyActivation)" in meta.reason
    assert [e["name"] for e in meta.extra["parse_errors"]] == ["determinant", "custom_act"]


def test_stage_without_gpu_keeps_a_build_proof(exports, quantized, tmp_path, monkeypatch):
    trt = rtx()
    monkeypatch.setattr(formats, "device_missing", lambda hw: NO_GPU)
    metrics = tensorrt_stage.run(exports, tmp_path / "set", quantized_dir=quantized, **PROFILE)
    assert metrics["trt_fp16_built"] and metrics["trt_int8_built"]
    for name, precision, parent in (("trt_fp16", "fp16", "onnx_fp32"), ("trt_int8", "int8", "onnx_int8_trt")):
        vdir = tmp_path / "set" / name
        meta = variant.read(vdir)
        assert meta.skipped and meta.precision == precision and meta.parent == parent
        assert meta.reason == (f"{NO_GPU}: engine built by tensorrt_rtx {trt.__version__} "
                               "as a parse/build proof only (not deployable)")
        assert meta.extra["builder"]["module"] == "tensorrt_rtx" and meta.extra["engine_bytes"] > 10_000
        assert meta.extra["build_seconds"] > 0 and meta.extra["parse_errors"] == []
        assert list(meta.files) == [trt_fmt.PROOF_FILE] and not (vdir / trt_fmt.ENGINE_FILE).exists()
        with pytest.raises(ArtifactError, match="skipped"):
            formats.load(vdir)
    assert variant.read(tmp_path / "set" / "trt_fp16").extra["fp16_conversion"]["kept_float32_ops"] == ["Softmax"]
    assert (tmp_path / "set" / trt_fmt.TIMING_CACHE_FILE).is_file()


def test_stage_without_tensorrt_or_gpu_is_skipped_with_reason(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "device_missing", lambda hw: NO_GPU)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    tensorrt_stage.run(exports, tmp_path / "set", **PROFILE)
    fp16, int8 = (variant.read(tmp_path / "set" / n) for n in ("trt_fp16", "trt_int8"))
    assert fp16.reason == f"TensorRT not installed (no tensorrt or tensorrt_rtx module) and {NO_GPU}"
    assert int8.reason.startswith("no TensorRT-ready int8 variant was given")
    assert fp16.files == {} and int8.files == {}


def test_stage_switched_off(exports, tmp_path):
    tensorrt_stage.run(exports, tmp_path / "set", enabled=False)
    assert variant.read(tmp_path / "set" / "trt_fp16").reason == "switched off by a pipeline parameter (tensorrt_enabled)"


@pytest.mark.gpu
def test_runner_on_gpu(exports, test_x, tmp_path):
    missing = formats.device_missing("gpu")
    if missing:
        pytest.skip(f"the TensorRT runner executes engines on a GPU: {missing}")
    trt, reason = trt_fmt.resolve()
    if trt is None:
        pytest.skip(reason)
    tensorrt_stage.run(exports, tmp_path / "set", **PROFILE)
    runner = formats.load(tmp_path / "set" / "trt_fp16")
    expected = ort_predict(exports / "onnx_fp32" / "model.onnx", test_x)
    for n in (1, 7, 64, len(test_x)):  # within, below opt, at max, beyond max (chunked)
        got = runner.predict(test_x[:n])
        assert got.shape == expected[:n].shape and np.abs(got - expected[:n]).max() < 1e-2


def test_stage_row_for_a_graph_that_cannot_go_float16(quantized, tmp_path, monkeypatch):
    """A quantized graph handed over as the fp32 export: a skipped trt_fp16 with the reason, not a crash."""
    import shutil

    rtx()
    monkeypatch.setattr(formats, "device_missing", lambda hw: NO_GPU)
    src = tmp_path / "exports" / "onnx_fp32"
    shutil.copytree(quantized / "onnx_int8_trt", src)
    meta = variant.read(src)
    meta.name, meta.precision = "onnx_fp32", "fp32"  # the stage finds its source by kfopt.json, not by name
    variant.write(src, meta)
    tensorrt_stage.run(tmp_path / "exports", tmp_path / "set", **PROFILE)
    fp16 = variant.read(tmp_path / "set" / "trt_fp16")
    assert fp16.skipped and fp16.reason.startswith("cannot convert onnx_fp32 to float16: Graph")
    assert "already quantized" in fp16.reason
