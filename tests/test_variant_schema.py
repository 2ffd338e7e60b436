"""kfopt.json schema 2: source framework and runtime apart; cards written by the previous release still read."""

import json

from kfopt import variant

V1_CARDS = {  # exactly what kfopt wrote before schema 2 (2026-11), one per kind of variant
    "baseline": ("savedmodel", "tensorflow", "tensorflow"),
    "tflite_int8": ("tflite", "litert", "litert"),
    "onnx_int8": ("onnx", "onnxruntime", "onnxruntime"),
    "xla": ("xla", "tensorflow-xla", "xla"),
    "trt_fp16": ("tensorrt", "tensorrt_rtx", "tensorrt_rtx"),
}


def _v1(tmp_path, name, fmt, framework):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"weights")
    card = {"name": name, "format": fmt, "precision": "int8", "target": "cpu", "task": "multiclass",
            "framework": framework, "technique": "quantize", "params": {}, "parent": "baseline", "status": "ok",
            "reason": None, "files": {"model.bin": variant.sha256_file(folder / "model.bin")}, "extra": {},
            "kfopt_version": "0.1.0", "input": {"name": "input", "shape": [None, 8, 8, 1], "dtype": "float32",
                                                "scale": None, "zero_point": None},
            "output": {"name": "output", "shape": [None, 10], "dtype": "float32", "scale": None,
                       "zero_point": None}}
    (folder / variant.META_FILE).write_text(json.dumps(card))
    return folder


def test_previous_release_cards_read_as_keras_source_with_their_runtime(tmp_path):
    for name, (fmt, framework, runtime) in V1_CARDS.items():
        meta = variant.read(_v1(tmp_path, name, fmt, framework))
        assert (meta.framework, meta.runtime, meta.schema_version) == ("keras", runtime, variant.SCHEMA_VERSION)
        assert meta.format == fmt


def test_new_cards_keep_framework_and_runtime_apart(tmp_path):
    meta = variant.read(_v1(tmp_path, "onnx_int8", "onnx", "onnxruntime"))
    meta.framework, meta.runtime = "torch", "onnxruntime"
    variant.write(tmp_path / "onnx_int8", meta)
    again = variant.read(tmp_path / "onnx_int8")
    assert (again.framework, again.runtime) == ("torch", "onnxruntime")
    assert json.loads((tmp_path / "onnx_int8" / variant.META_FILE).read_text())["schema_version"] == 2
