"""The bench's own tools at a tiny scale, without a `make bench`: the MAC counter, the matrix-multiply
ceiling, the figures' goal readings, and the model kfopt did not build that the
bench trains (tf_keras.applications.MobileNetV2, alpha 0.5, on 32×32 digits) for `kfopt run --model`."""

import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import foreign  # noqa: E402
import machine_limit  # noqa: E402
import macs  # noqa: E402
import tables  # noqa: E402


def _small_cnn():
    """A graph with known MACs per sample: Conv 3→4 3×3 on 8×8 (4·64·27 = 6,912), depthwise 3×3 stride 2
    (4·16·9 = 576), Gemm 64→10 (640), MatMul 10→5 (50); the batch dimension is symbolic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], group=4, strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c2"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["g"]),
             helper.make_node("MatMul", ["g", "w4"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              initializer=[init("w1", (4, 3, 3, 3)), init("w2", (4, 1, 3, 3)), init("w3", (64, 10)),
                                           init("w4", (10, 5))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_mac_counter_on_a_graph_with_known_macs():
    counted = macs.count(_small_cnn())
    assert counted["by_op"] == {"Conv": 6912 + 576, "Gemm": 640, "MatMul": 50}
    assert counted["macs"] == 8178 and counted["nodes"] == 4 and counted["unknown"] == []
    assert macs.op_counts(_small_cnn()) == {"Conv": 2, "Relu": 1, "Flatten": 1, "Gemm": 1, "MatMul": 1}


def test_mac_counter_reads_an_int8_graph_like_its_fp32_one(tmp_path):
    """ORT's static int8 (QDQ) of the same graph keeps its arithmetic: the same count."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    import onnx

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)}
                              for i in range(4)])

        def get_next(self):
            return next(self.rows, None)

    onnx.save(_small_cnn(), tmp_path / "fp32.onnx")
    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    assert macs.count(tmp_path / "int8.onnx")["macs"] == macs.count(tmp_path / "fp32.onnx")["macs"] == 8178


def test_int8_layer_computes_the_integer_product():
    import onnxruntime as ort

    session = ort.InferenceSession(machine_limit.layer("int8_matmulinteger", 4, 16, 8).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    a = np.random.default_rng(2).integers(0, 256, (4, 16), dtype=np.uint8)
    b = np.random.default_rng(0).integers(-127, 128, (16, 8), dtype=np.int8)  # the layer's weights (seed 0)
    assert np.array_equal(session.run(None, {"a": a})[0], (a.astype(np.int32) - 128) @ b.astype(np.int32))


def test_machine_limit_gives_positive_rates_per_precision():
    result = machine_limit.measure(m=8, k=64, n=64, repeats=1, max_seconds=0.05)
    assert result["ops_per_call"] == 2 * 8 * 64 * 64
    assert set(result["kinds"]) == set(machine_limit.KINDS)
    assert all(k["ops_per_s"] > 0 and k["p50_ms"] > 0 for k in result["kinds"].values())
    int8 = [result["kinds"][k]["ops_per_s"] for k in machine_limit.KINDS if k.startswith("int8")]
    assert result["limit_ops_per_s"] == {"fp32": result["kinds"]["fp32"]["ops_per_s"], "int8": max(int8)}
    assert machine_limit.precision_of("dynamic-int8") == "int8" and machine_limit.precision_of("fp16") == "fp32"
    slower = {**result, "kinds": {k: {**v, "ops_per_s": v["ops_per_s"] / 2} for k, v in result["kinds"].items()}}
    slower["limit_ops_per_s"] = {k: v / 2 for k, v in result["limit_ops_per_s"].items()}
    kept = machine_limit.best(slower, result)
    assert kept["limit_ops_per_s"] == result["limit_ops_per_s"] and kept["runs"] == [slower["limit_ops_per_s"],
                                                                                        result["limit_ops_per_s"]]


def _row(title, per_round):
    return {"title": title, "a": "a", "b": "b", "measure": "p50 @1", "kind": "latency", "a_value": 1.0,
            "b_value": 1.0, "ratio": float(np.median(per_round)), "min": min(per_round), "max": max(per_round),
            "per_round": per_round}


def test_goal_readings():
    """A goal is reached only when the rounds clearly agree; "at least as fast" accepts no clear difference."""
    three_x = _row("x", [0.30, 0.31, 0.32, 0.29, 0.33])
    assert tables._factor_reached(three_x, 3.0) == "yes" and tables._factor_reached(three_x, 3.5) == "no"
    mixed = _row("x", [0.9, 1.1, 0.95, 1.05, 1.2])
    assert tables._factor_reached(mixed, 1.0) == "yes" and tables._factor_reached(mixed, 2.0) == "no"
    assert tables._factor_reached(_row("x", [1.2] * 5), 1.0) == "no"
    assert tables._factor_reached(None, 1.0) == "not measured"


def test_digits_at_32x32(tmp_path):
    with np.load(foreign.digits32(tmp_path / "d.npz")) as data:
        x, y = data["x"], data["y"]
    assert x.shape == (1797, 32, 32, 3) and y.shape == (1797,) and x.min() == 0 and x.max() == 1
    assert np.array_equal(x[:, ::4, ::4, 0] * 16, np.round(x[:, ::4, ::4, 0] * 16))  # each 4×4 block one pixel
    assert np.array_equal(x[..., 0], x[..., 2])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    npz = foreign.digits32(root / "digits32.npz")
    return root, npz, foreign.train("mobilenetv2", npz, root / "brought", epochs=1, limit=100)


def test_mobilenetv2_training_writes_a_model_the_pipeline_loads(trained):
    """One epoch on 65 rows: the accuracy is not the point; the saved model passing the checks the pipeline's
    train stage applies to a brought model (input shape, output units, safe loading) and answering is."""
    from kfopt.data import dataset as ds_mod
    from kfopt.frameworks import keras as adapter

    root, _, result = trained
    assert result["epochs_run"] == 1 and result["train_rows"] == 65 and 0 <= result["test_accuracy"] <= 1
    schema = ds_mod.read(root / "brought" / "split").schema
    assert schema.feature_shape == [32, 32, 3] and schema.normalization["method"] == "none"
    model, notes = adapter.load_user(root / "brought" / "mobilenetv2.keras", schema)
    assert notes["input_check"]["shape"] == [None, 32, 32, 3] and notes["parameters"] == result["parameters"]
    probs = adapter.predict(model, ds_mod.read(root / "brought" / "split").split("test")[0][:3])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_the_run_config_brings_the_model_with_the_split_it_was_trained_on(trained):
    from kfopt import config

    root, npz, result = trained
    path = foreign.pipeline_config(REPO / "config" / "digits_cnn.yaml", "mobilenetv2", npz, root / "m.keras",
                                   root / "mobilenetv2.yaml")
    cfg = config.load(path)
    config.validate(cfg)
    assert cfg.name == "mobilenetv2" and cfg.model.uri == str(root / "m.keras") and cfg.data.source == str(npz)
    assert (cfg.data.seed, cfg.data.val_fraction, cfg.data.test_fraction) == (
        foreign.SPLIT["seed"], foreign.SPLIT["val_fraction"], foreign.SPLIT["test_fraction"])
    assert cfg.prune.sparsities == config.load("digits_cnn").prune.sparsities  # optimized like the bundled CNN
