"""The ONNX peephole clean-up: real converters' graphs, real onnxscript/onnxoptimizer, real ONNX Runtime.

A model kfopt did not build (tf_keras.applications.MobileNetV2, alpha 0.35, 32x32x3, random weights:
the graph is what matters) is exported by kfopt's own pass; its explicit Pads and no-op Reshapes must
go, its answers must not change, and a rewrite that would change them is never applied.
"""

import numpy as np
import onnx
import pytest

from kfopt import export, formats, variant
from kfopt.formats import onnx_peephole
from kfopt.models import train


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    from kfopt.data import preprocess
    from kfopt.tfenv import keras

    k = keras()
    root = tmp_path_factory.mktemp("peephole")
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", x=rng.normal(0, 1, (60, 32, 32, 3)).astype(np.float32), y=np.arange(60) % 3)
    preprocess.run(str(root / "images.npz"), root / "dataset", seed=0)
    k.utils.set_random_seed(0)
    k.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3).save(
        root / "mobilenet.keras")
    train.run(root / "dataset", root / "baseline", model_uri=str(root / "mobilenet.keras"))
    export.run(root / "baseline", root / "exports", tflite=False)
    return root


def test_a_brought_mobilenet_loses_its_pads_and_reshapes_not_its_answers(mobilenet):
    meta = variant.read(mobilenet / "exports" / "onnx_fp32")
    record = meta.extra["peephole"]
    assert record["applied"] is True, record
    assert record["nodes_after"] < record["nodes_before"] and record["removed"].get("Pad", 0) >= 1
    ops = {n.op_type for n in onnx.load(str(mobilenet / "exports" / "onnx_fp32" / "model.onnx")).graph.node}
    assert "Pad" not in ops
    x = np.random.default_rng(1).normal(0, 1, (5, 32, 32, 3)).astype(np.float32)  # dynamic batch kept
    ours = formats.load(mobilenet / "exports" / "onnx_fp32").predict(x)
    theirs = formats.load(mobilenet / "baseline").predict(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_a_rewrite_that_changes_the_answers_is_not_applied(mobilenet, monkeypatch):
    """A stand-in rewriter that really changes the function (a Softmax dropped) must be caught by the probes."""
    original = onnx.load(str(mobilenet / "exports" / "onnx_fp32" / "model.onnx"))

    def breaks(proto):
        broken = onnx.ModelProto()
        broken.CopyFrom(proto)
        soft = next(n for n in broken.graph.node if n.op_type == "Softmax")
        soft.op_type = "Relu"
        del soft.attribute[:]
        return broken

    monkeypatch.setattr(onnx_peephole, "_rewrite", breaks)
    kept, record = onnx_peephole.optimize(original, (32, 32, 3))
    assert kept is original and record["applied"] is False and "answers changed at batch 1" in record["reason"]


def test_a_rewriter_that_raises_keeps_the_exported_graph(digits_small, tmp_path, monkeypatch):
    def fails(proto):
        raise RuntimeError("rewriter broke")

    monkeypatch.setattr(onnx_peephole, "_rewrite", fails)
    export.run(digits_small["baseline"], tmp_path / "exports", tflite=False)
    record = variant.read(tmp_path / "exports" / "onnx_fp32").extra["peephole"]
    assert record == {"tool": "onnxscript.optimizer + onnxoptimizer", "nodes_before": record["nodes_before"],
                      "applied": False, "reason": "RuntimeError: rewriter broke"}
