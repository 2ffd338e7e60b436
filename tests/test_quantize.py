"""The quantize stage: real TFLite and ONNX Runtime conversions of a small trained CNN/MLP.

Accuracy is asserted against the baseline on the test split with a budget suited to its size (100
samples: one sample is 1 pp), sizes against the fp32 TFLite file, and the accuracy-aware fallback is
forced with an impossible budget (0 pp, full agreement, 1 calibration sample).
"""

import json

import numpy as np
import pytest

from kfopt import bench, formats, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.frameworks import keras as keras_adapter
from kfopt.formats import tflite as tflite_fmt
from kfopt.optimize import quantize
from kfopt.passes import check

NAMES = {"tflite_dynamic", "tflite_fp16", "tflite_int8", "onnx_int8", "onnx_int8_trt", "tflite_qat_int8"}
BUDGET_PP = 2.0  # two test samples of 100


def _evaluate(vdir, dataset_dir, baseline_dir):
    x, y = ds_mod.read(dataset_dir).split("test")
    probs = bench.predict_all(formats.load(vdir), x)
    base = bench.predict_all(formats.load(baseline_dir), x)
    return probs, verify.compare(probs, base, y, variant.read(vdir).task, BUDGET_PP, 0.9)


@pytest.fixture(scope="module")
def quantized(digits_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantize") / "variants"
    metrics = quantize.run(digits_small["baseline"], digits_small["dataset"], out, calibration_samples=100,
                           qat_epochs=1, accuracy_budget=1.5, min_agreement=0.95,
                           ort_search=("QDQ S8S8 per-channel MinMax",))  # the QDQ form, checked below
    return out, metrics


def test_every_quantized_variant_runs_and_stays_within_budget(quantized, digits_small):
    out, metrics = quantized
    dirs = {variant.read(d).name: d for d in variant.discover(out)}
    assert set(dirs) == NAMES and metrics["variants"] == len(NAMES)
    for name, vdir in dirs.items():
        meta = variant.read(vdir)
        assert meta.parent == ("onnx_fp32" if meta.format == "onnx" else "baseline") and meta.status == "ok"
        probs, check = _evaluate(vdir, digits_small["dataset"], digits_small["baseline"])
        assert probs.dtype == np.float32 and probs.shape[1] == 10  # float probabilities from every runner
        assert np.allclose(probs.sum(axis=1), 1, atol=0.05), name
        assert check["passed"], (name, check)
    precisions = {n: variant.read(d).precision for n, d in dirs.items()}
    assert precisions["tflite_dynamic"] == "dynamic-int8" and precisions["tflite_fp16"] == "fp16"
    assert precisions["tflite_int8"] == precisions["onnx_int8"] == precisions["tflite_qat_int8"] == "int8"


def test_full_int8_tflite_has_int8_io_and_is_3_5x_smaller(quantized, digits_small):
    out, _ = quantized
    meta = variant.read(out / "tflite_int8")
    assert meta.input.dtype == meta.output.dtype == "int8"
    assert meta.input.scale > 0 and meta.output.scale > 0 and meta.input.zero_point is not None
    assert meta.params["calibration_samples"] == 100
    fp32 = tflite_fmt.convert(keras_adapter.load(digits_small["baseline"]))
    int8 = (out / "tflite_int8" / tflite_fmt.FILENAME).stat().st_size
    assert len(fp32) / int8 >= 3.5
    qat = variant.read(out / "tflite_qat_int8")
    assert qat.technique == "qat" and qat.input.dtype == "int8" and "in_stage_check" in qat.extra


def test_onnx_variants_are_qdq_and_the_trt_one_is_symmetric_with_float_bias(quantized):
    import onnx
    from onnx import numpy_helper

    out, _ = quantized
    for name, symmetric in (("onnx_int8", False), ("onnx_int8_trt", True)):
        meta = variant.read(out / name)
        graph = onnx.load(str(out / name / "model.onnx")).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        producers = {o: n for n in graph.node for o in n.output}
        weight_dq = producers[convs[0].input[1]]
        assert inits[weight_dq.input[1]].size > 1  # per-channel weight scales
        bias_from_dq = convs[0].input[2] in producers and producers[convs[0].input[2]].op_type == "DequantizeLinear"
        assert bias_from_dq is not symmetric  # the TensorRT form leaves the bias in float
        if symmetric:
            assert meta.extra["tensorrt_ready"] is True and meta.target == "gpu"
            zero_points = [inits[n.input[2]] for n in graph.node
                           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
            assert zero_points and all((z == 0).all() for z in zero_points)
        else:
            assert meta.target == "cpu" and "tensorrt_ready" not in meta.extra


def test_binary_task_int8_keeps_probabilities_and_auc(cancer_small, tmp_path):
    out = tmp_path / "q"
    quantize.run(cancer_small["baseline"], cancer_small["dataset"], out, qat=False, accuracy_budget=3.0,
                 min_agreement=0.9)
    x, y = ds_mod.read(cancer_small["dataset"]).split("test")
    for name in ("tflite_int8", "onnx_int8"):
        probs = bench.predict_all(formats.load(out / name), x)
        assert probs.shape == (len(x), 1) and 0 <= probs.min() and probs.max() <= 1
        quality = verify.quality(probs, y, "binary")
        assert quality["accuracy"] > 0.85 and quality["auc"] > 0.9


def _outlier_baseline(digits_small, out):
    """The same function in float, hostile to int8: one conv1 channel scaled by 1000 (and conv2's weights
    reading it divided by 1000; ReLU and max-pooling commute with a positive scale), so that channel's
    range swamps the shared activation scale and the other channels round to zero in int8."""
    model = keras_adapter.load(digits_small["baseline"])
    conv1, conv2 = [layer for layer in model.layers if "conv" in layer.name][:2]
    (k1, b1), (k2, b2) = conv1.get_weights(), conv2.get_weights()
    k1[..., 0] *= 1000
    b1[0] *= 1000
    k2[:, :, 0, :] /= 1000
    conv1.set_weights([k1, b1])
    conv2.set_weights([k2, b2])
    keras_adapter.save(model, out)
    variant.write(out, variant.read(digits_small["baseline"]))
    return out


def test_fallback_keeps_layers_in_float_and_saves_the_best(digits_small, tmp_path):
    baseline = _outlier_baseline(digits_small, tmp_path / "baseline")
    out = tmp_path / "q"
    metrics = quantize.run(baseline, digits_small["dataset"], out, calibration_samples=50, qat=False,
                           accuracy_budget=0.0, min_agreement=1.0, fallback_max_attempts=2)
    x = ds_mod.read(digits_small["dataset"]).split("val")[0]
    for name in ("tflite_int8", "onnx_int8"):
        meta = variant.read(out / name)  # saved whatever happened, checksums intact
        fallback = meta.extra["fallback"]
        assert len(fallback["attempts"]) >= 2, fallback
        first, retry = fallback["attempts"][:2]
        assert first["float_layers"] == [] and not first["passed"] and retry["float_layers"]
        assert fallback["layer_errors"] and fallback["float_layers"] == \
            fallback["attempts"][fallback["chosen_attempt"]]["float_layers"]
        best = max(fallback["attempts"], key=lambda a: (a["passed"], a["accuracy_delta_pp"], a["agreement"]))
        assert fallback["attempts"][fallback["chosen_attempt"]]["accuracy_delta_pp"] == best["accuracy_delta_pp"]
        assert formats.load(out / name).predict(x[:4]).shape == (4, 10)
        assert metrics[f"{name}_float_layers"] == len(fallback["float_layers"])
    # ORT's ranking (SQNR drop vs fp32 across each node) finds both convolutions; in float they undo the
    # damage (int8 loses ~80 pp here), and that attempt is the one saved.
    ort = variant.read(out / "onnx_int8").extra["fallback"]
    chosen = ort["attempts"][ort["chosen_attempt"]]
    assert len(chosen["float_layers"]) == 2
    assert chosen["accuracy_delta_pp"] > -3 > ort["attempts"][0]["accuracy_delta_pp"]
    json.dumps(variant.read(out / "tflite_int8").to_dict())  # kfopt.json stays plain JSON


def test_calibration_count_larger_than_the_train_split_is_clamped_with_a_warning(digits_small):
    ds = ds_mod.read(digits_small["dataset"])
    with pytest.warns(UserWarning, match="calibrating on all"):
        samples = check.calibration_set(ds, 10**6)
    assert len(samples) == len(ds.split("train")[0])
    assert len(check.calibration_set(ds, 7)) == 7  # samples, not batches


def test_selective_quantization_really_keeps_the_layer_in_float(digits_small):
    from ai_edge_litert.interpreter import Interpreter

    model = keras_adapter.load(digits_small["baseline"])
    samples = check.calibration_set(ds_mod.read(digits_small["dataset"]), 32)
    maker = tflite_fmt.Int8Converter(model, samples)
    worst = maker.rank()[0][0]
    interp = Interpreter(model_content=maker.convert([worst]))
    float_outputs = [interp._get_tensor_details(op["outputs"][0], 0)["dtype"] for op in interp._get_ops_details()
                     if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert np.float32 in float_outputs and np.int8 in float_outputs  # one layer float, the rest int8
    assert interp.get_input_details()[0]["dtype"] == np.int8


def test_switched_off_writes_skipped_variants_with_the_reason(digits_small, tmp_path):
    out = tmp_path / "q"
    assert quantize.run(digits_small["baseline"], digits_small["dataset"], out, enabled=False) == {"variants": 0}
    metas = [variant.read(d) for d in variant.discover(out)]
    assert {m.name for m in metas} == NAMES
    assert all(m.skipped and m.reason == check.SWITCHED_OFF for m in metas)
