"""OpenVINO: IR fp32 and NNCF int8 from ONNX variants, static programs per batch, pinned settings, failures as rows.

Real OpenVINO and NNCF throughout, on the bundled digits CNN (in Keras, and in torch) and on a model
kfopt did not build (tf_keras.applications.MobileNetV2, alpha 0.35, 32x32x3, trained briefly on a
synthetic image set, brought with model_uri and exported by kfopt's export stage).
"""

import json
import shutil

import numpy as np
import pytest

from kfopt import bench, export, formats, select, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.data import preprocess
from kfopt.errors import ConfigError
from kfopt.models import train
from kfopt.passes import openvino as ov_pass

BATCHES = [1, 64]
BUDGET = {"accuracy_budget": 0.5, "min_agreement": 0.97}
# The MobileNetV2 is trained for seconds and has ~50 test rows (one row = 2 pp); int8 of it has lost up to
# 4% top-1 agreement here (also with more calibration data or NNCF's slower bias correction).
MOBILENET_BUDGET = {"accuracy_budget": 5.0, "min_agreement": 0.9}


def _images(path, n=240, classes=3, seed=0):
    """Noise with a bright patch in a class-specific quadrant: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 32, 32, 3)).astype(np.float32)
    y = np.arange(n) % classes
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, 16 * r:16 * r + 16, 16 * q:16 * q + 16, c] += 2.0
    np.savez(path, x=x, y=y)
    return path


def _convert(root, baseline, dataset, budget):
    export.run(baseline, root / "exports", tflite=False)
    metrics = ov_pass.run(dataset, baseline, root / "exports", root / "openvino", calibration_samples=64,
                          batch_sizes=BATCHES, threads=1, **budget)
    return {"root": root, "dataset": dataset, "baseline": baseline, "exports": root / "exports",
            "openvino": root / "openvino", "metrics": metrics, "budget": budget}


@pytest.fixture(scope="module")
def digits_ov(digits_small, tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("ov_digits"), digits_small["baseline"], digits_small["dataset"], BUDGET)


@pytest.fixture(scope="module")
def mobilenet_ov(tmp_path_factory):
    from kfopt.tfenv import keras

    k = keras()
    root = tmp_path_factory.mktemp("ov_mobilenet")
    preprocess.run(str(_images(root / "images.npz")), root / "dataset", seed=0)
    ds = ds_mod.read(root / "dataset")
    k.utils.set_random_seed(0)
    model = k.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3)
    for layer in model.layers:  # moving statistics that settle within a short training run
        if isinstance(layer, k.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(k.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    model.fit(*ds.split("train"), epochs=10, batch_size=16, verbose=0)
    model.save(root / "mobilenet.keras")
    train.run(root / "dataset", root / "baseline", model_uri=str(root / "mobilenet.keras"))
    return _convert(root, root / "baseline", root / "dataset", MOBILENET_BUDGET)


@pytest.fixture(params=["digits_ov", "mobilenet_ov"])
def made(request):
    return request.getfixturevalue(request.param)


def _test_split(made):
    x, y = ds_mod.read(made["dataset"]).split("test")
    return x, y, bench.predict_all(formats.load(made["baseline"]), x)


def test_fp32_ir_answers_like_the_onnx(made):
    vdir = made["openvino"] / "openvino_fp32"
    meta = variant.read(vdir)  # checksums of model.xml and model.bin
    assert (meta.format, meta.precision, meta.parent, meta.target, meta.status) == (
        "openvino", "fp32", "onnx_fp32", "cpu", "ok")
    assert sorted(meta.files) == ["model.bin", "model.xml"]
    xml = (vdir / "model.xml").read_text()
    assert 'element_type="f16"' not in xml and 'element_type="f32"' in xml  # weights not compressed to fp16
    x, _, _ = _test_split(made)
    ir = bench.predict_all(formats.load(vdir, threads=1), x)
    onnx = bench.predict_all(formats.load(made["exports"] / "onnx_fp32", threads=1), x)
    assert ir.shape == onnx.shape and np.abs(ir - onnx).max() < 1e-4


def test_int8_agrees_with_the_baseline(made):
    vdir = made["openvino"] / "openvino_int8"
    meta = variant.read(vdir)
    assert (meta.format, meta.precision, meta.params["tool"]) == ("openvino", "int8", "nncf")
    assert "FakeQuantize" in (vdir / "model.xml").read_text()
    x, y, base = _test_split(made)
    runner = formats.load(vdir, threads=1)
    floor = made["budget"]["min_agreement"]
    check = verify.compare(bench.predict_all(runner, x), base, y, meta.task, 100.0, floor)
    assert check["agreement"] >= floor, (check, meta.extra["fallback"])
    for program in runner.runtime_config["programs"].values():  # it really runs int8 kernels
        layers = program["layers_by_precision"]
        assert layers.get("u8", 0) + layers.get("i8", 0) > 0, layers
    fallback = meta.extra["fallback"]
    assert fallback["attempts"][0]["method"] == "nncf.quantize" and "validation split" in fallback["checked_on"]


def test_every_batch_size_verified_and_recorded(made):
    x, y, base = _test_split(made)
    for kind in ("fp32", "int8"):
        check = variant.read(made["openvino"] / f"openvino_{kind}").extra["batch_verification"]
        assert sorted(check["batches"], key=int) == [str(b) for b in BATCHES]
        assert check["samples"] == len(y) and check["threads"] == 1 and check["against"] == "baseline"
        assert check["failing"] == [int(b) for b, r in check["batches"].items() if not r["passed"]]
        for batch, programs in check["runtime"]["programs"].items():
            assert programs["INFERENCE_NUM_THREADS"] == "1" and programs["INFERENCE_PRECISION_HINT"] == "f32"
        # the recorded figures are what the variant answers at that batch, through its own program
        probs = ov_pass.predict_in_batches(formats.load(made["openvino"] / f"openvino_{kind}", threads=1), x, 1)
        assert check["batches"]["1"]["agreement"] == pytest.approx(
            float((verify.labels(probs, "multiclass") == verify.labels(base, "multiclass")).mean()))
    assert made["metrics"]["variants"] == 2


def test_runner_pins_and_records_its_settings(digits_ov):
    vdir = digits_ov["openvino"] / "openvino_int8"
    x, _, _ = _test_split(digits_ov)
    for threads in (1, 2):
        runner = formats.load(vdir, threads=threads)
        one, five = runner.predict(x[:1]), runner.predict(x[:5])
        assert np.abs(one[0] - five[0]).max() < 1e-4  # two static programs, same answer for the same row
        config = runner.runtime_config
        assert sorted(config["programs"], key=int) == ["1", "5"]
        assert config["requested"] == {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                       "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        for program in config["programs"].values():
            assert program["INFERENCE_NUM_THREADS"] == str(threads) and program["NUM_STREAMS"] == "1"
            assert program["PERFORMANCE_HINT"] == "LATENCY" and program["INFERENCE_PRECISION_HINT"] == "f32"
        assert config["version"].startswith("2026.4.1")


def _broken_copy(digits_ov, tmp_path, how):
    vdir = tmp_path / "openvino_fp32"
    shutil.copytree(digits_ov["openvino"] / "openvino_fp32", vdir)
    meta = variant.read(vdir)
    if how == "bin":
        (vdir / "model.bin").write_bytes((vdir / "model.bin").read_bytes()[:100])
    else:  # a feature shape the network cannot take (its reshape to the flat layer has no valid size)
        meta.input.shape = [None, 2, 2, 1]
    variant.write(vdir, meta)  # checksums match: the failure is OpenVINO's, not kfopt's checksum check
    return vdir


@pytest.mark.parametrize("how", ["bin", "shape"])
def test_a_broken_program_is_a_failed_row_not_a_crash(digits_ov, tmp_path, how):
    vdir = _broken_copy(digits_ov, tmp_path, how)
    summary = bench.run([vdir], digits_ov["dataset"], tmp_path / "bench", baseline_dir=digits_ov["baseline"],
                        batch_sizes=[1], threads=1, warmup=1, min_runs=6, max_seconds=0.1, log=lambda _: None)
    (row,) = summary["results"]
    assert row["status"] == "failed" and row["name"] == "openvino_fp32"
    assert "OpenVINO" in row["reason"] and "openvino_fp32" in row["reason"], row["reason"]
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["results"][0]["status"] == "failed"


def test_a_program_that_does_not_compile_fails_its_batch_and_is_never_chosen(digits_ov, tmp_path):
    vdir = _broken_copy(digits_ov, tmp_path, "shape")
    ds = ds_mod.read(digits_ov["dataset"])
    cfg = ov_pass.Config(batch_sizes=tuple(BATCHES), threads=1)
    check = ov_pass.verify_batches(vdir, ov_pass.Reference.of(digits_ov["baseline"], ds, cfg), cfg)
    assert check["failing"] == BATCHES
    assert "could not compile variant 'openvino_fp32' for batch 1" in check["batches"]["1"]["reason"]
    fast = {"name": "openvino_fp32", "format": "openvino", "hardware": "cpu", "status": "ok", "accuracy": 0.9,
            "verification": {"passed": True, "accuracy_delta_pp": 0.0}, "size_gzip_bytes": 1,
            "latency": {"1": {"p50_ms": 0.01, "throughput": 1e5}, "64": {"p50_ms": 0.1, "throughput": 6e5}},
            "extra": variant.read(vdir).extra}
    slow = {**fast, "name": "onnx_fp32", "format": "onnx", "extra": {},
            "latency": {"1": {"p50_ms": 1.0, "throughput": 1e3}, "64": {"p50_ms": 9.0, "throughput": 7e3}}}
    choice = select.choose([fast, slow], ["cpu"], {"cpu": "latency:1"})["cpu"]
    assert choice["chosen"] == "onnx_fp32"
    alone = select.choose([fast], ["cpu"], {"cpu": "throughput:64"})["cpu"]
    assert alone["chosen"] is None and "wrong at batch 64" in alone["reason"]


def test_the_cpu_target_uses_a_variant_only_at_the_batches_it_passed(digits_ov):
    extra = {"batch_verification": {"batches": {"1": {"passed": False, "reason": "top-1 agreement 0.1 < 0.97"},
                                                "64": {"passed": True, "reason": "within budget"}}}}
    row = {"name": "openvino_int8", "format": "openvino", "hardware": "cpu", "status": "ok", "accuracy": 0.9,
           "verification": {"passed": True, "accuracy_delta_pp": 0.0}, "size_gzip_bytes": 1, "extra": extra,
           "latency": {"1": {"p50_ms": 0.01, "throughput": 1e5}, "64": {"p50_ms": 0.1, "throughput": 6e5}}}
    assert select.choose([row], ["cpu"], {"cpu": "throughput:64"})["cpu"]["chosen"] == "openvino_int8"
    at_one = select.choose([row], ["cpu"], {"cpu": "latency:1"})["cpu"]
    assert at_one["chosen"] is None and "wrong at batch 1: top-1 agreement 0.1" in at_one["reason"]


def test_fallback_runs_accuracy_control_when_the_check_misses(digits_ov, tmp_path):
    """min_agreement 1.0: any disagreement misses the check, so NNCF's accuracy control must run."""
    made = ov_pass.run(digits_ov["dataset"], digits_ov["baseline"], digits_ov["exports"], tmp_path / "ov",
                       calibration_samples=64, batch_sizes=[64], accuracy_budget=0.5, min_agreement=1.0,
                       fallback_max_attempts=2, threads=1)
    fallback = variant.read(tmp_path / "ov" / "openvino_int8").extra["fallback"]
    first = fallback["attempts"][0]
    if first["passed"]:
        pytest.skip("int8 agreed with the baseline on every validation sample; no fallback to exercise")
    second = fallback["attempts"][1]
    assert second["method"] == "nncf.quantize_with_accuracy_control"
    assert (second["metric"], second["max_drop"], second["iterations"]) == ("agreement", 0.0, 2)
    assert second["fake_quantize_ops"] <= first["fake_quantize_ops"]
    assert len(second["float_layers"]) == first["fake_quantize_ops"] - second["fake_quantize_ops"]
    best = fallback["chosen_attempt"]
    assert fallback["attempts"][best]["agreement"] == max(a["agreement"] for a in fallback["attempts"])
    assert made["variants"] == 2


def test_switched_off_and_nothing_to_convert_write_skipped(digits_ov, tmp_path):
    ov_pass.run(digits_ov["dataset"], digits_ov["baseline"], digits_ov["exports"], tmp_path / "off", enabled=False)
    for kind in ("fp32", "int8"):
        meta = variant.read(tmp_path / "off" / f"openvino_{kind}")
        assert meta.skipped and meta.format == "openvino" and "switched off" in meta.reason
    export.run(digits_ov["baseline"], tmp_path / "no_onnx", tflite=False, onnx=False)
    ov_pass.run(digits_ov["dataset"], digits_ov["baseline"], tmp_path / "no_onnx", tmp_path / "none")
    meta = variant.read(tmp_path / "none" / "openvino_int8")
    assert meta.skipped and "no ONNX fp32 variant to convert (onnx_fp32: skipped: switched off" in meta.reason


def test_any_onnx_fp32_variant_is_accepted_by_its_metadata_not_its_name(digits_ov, tmp_path):
    renamed = tmp_path / "sets" / "student_export"  # as distill's ONNX export of its student would be
    shutil.copytree(digits_ov["exports"] / "onnx_fp32", renamed)
    meta = variant.read(renamed)
    meta.name, meta.parent, meta.technique = "student_export", "student", "distill+export"
    variant.write(renamed, meta)
    found, _ = ov_pass.parents([digits_ov["exports"], tmp_path / "sets"])
    assert [m.name for _, m in found] == ["onnx_fp32", "student_export"]
    assert ov_pass.names(found[0][1]) == {"fp32": "openvino_fp32", "int8": "openvino_int8"}
    assert ov_pass.names(found[1][1]) == {"fp32": "student_openvino_fp32", "int8": "student_openvino_int8"}
    not_onnx = variant.read(digits_ov["openvino"] / "openvino_fp32")
    assert not ov_pass.accepts(not_onnx)


@pytest.mark.parametrize("bad, match", [({"batch_sizes": [0, 64]}, "positive integers"),
                                        ({"calibration_samples": 0}, "at least 1"),
                                        ({"min_agreement": 1.5}, "min_agreement"),
                                        ({"threads": 0}, "threads")])
def test_bad_settings_fail_clearly_and_leave_nothing(digits_ov, tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        ov_pass.run(digits_ov["dataset"], digits_ov["baseline"], digits_ov["exports"], tmp_path / "ov", **bad)
    assert not (tmp_path / "ov").exists()


def test_a_torch_models_onnx_gets_openvino_too(tmp_path):
    """The pass reads only kfopt.json: the ONNX that torch.onnx (dynamo) exports converts and verifies alike."""
    preprocess.run("digits", tmp_path / "dataset", limit=300, seed=3)
    train.run(tmp_path / "dataset", tmp_path / "baseline", architecture="digits_cnn", framework="torch", epochs=4,
              patience=2, batch_size=32, learning_rate=2e-3, seed=1)
    made = _convert(tmp_path, tmp_path / "baseline", tmp_path / "dataset", BUDGET)
    for kind in ("fp32", "int8"):
        meta = variant.read(made["openvino"] / f"openvino_{kind}")
        assert (meta.framework, meta.runtime, meta.format) == ("torch", "openvino", "openvino")
        assert meta.parent == "onnx_fp32"
        assert sorted(meta.extra["batch_verification"]["batches"], key=int) == ["1", "64"]
    x, _, base = _test_split(made)
    ir = bench.predict_all(formats.load(made["openvino"] / "openvino_fp32"), x)
    assert np.abs(ir - base).max() < 1e-4  # fp32 IR of the torch model answers like eager torch
