"""PyTorch end to end (issue 11): kfopt's own torch models trained, a `.pt2` and a `.onnx` brought, bad input.

Everything is real: torch 2.13 (CPU) trains and exports, `torch.onnx.export(dynamo=True)` and ONNX
Runtime check each other, the benchmark worker times the torch eager runner. The brought models are
architectures kfopt did not build, written here the way torchvision writes them (a ResNet of
BasicBlocks with batch norm and residual adds, a MobileNetV2 of inverted residuals with depthwise
convolutions and ReLU6): PyPI's torchvision does not import beside the pinned CPU torch. They train
for a few epochs on the digits slice so their baselines are plausible.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from kfopt import bench, formats, frameworks, variant  # noqa: E402
from kfopt.data import dataset as ds_mod  # noqa: E402
from kfopt.data import preprocess  # noqa: E402
from kfopt.errors import ConfigError, KfoptError, ModelError  # noqa: E402
from kfopt.formats import torch as torch_fmt  # noqa: E402
from kfopt.frameworks import onnx as onnx_adapter  # noqa: E402
from kfopt.frameworks import torch as adapter  # noqa: E402
from kfopt.models import existing, torch_architectures, torch_train, train  # noqa: E402

BATCH = torch.export.Dim("batch")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Digits (400 samples): standardized for kfopt's own model, as given (pixels 0-16) for brought ones."""
    root = tmp_path_factory.mktemp("torch_data")
    preprocess.run("digits", root / "std", limit=400, seed=3)
    preprocess.run("digits", root / "raw", limit=400, seed=3, normalize="none")
    return {"root": root, "std": root / "std", "raw": root / "raw"}


@pytest.fixture(scope="module")
def own(data):
    """kfopt's digits CNN trained in torch (early stopping, patience 2)."""
    out = data["root"] / "own_baseline"
    metrics = train.run(data["std"], out, architecture="digits_cnn", framework="torch", epochs=12, patience=2,
                        batch_size=32, learning_rate=2e-3, seed=1)
    return {"dir": out, "metrics": metrics}


# -- kfopt's own torch models ---------------------------------------------------------------------------


def test_own_model_trains_to_a_torch_baseline(own, data):
    meta = variant.read(own["dir"])
    assert (meta.format, meta.framework, meta.runtime, meta.precision) == ("torch", "torch", "torch", "fp32")
    assert own["metrics"]["test_accuracy"] > 0.7  # 10 classes: chance is 0.1
    history = own["metrics"]["history"]
    # early stopping restored the best weights: the model's validation loss is the best seen
    module = adapter.load(own["dir"])
    assert isinstance(module, nn.Module) and module.architecture == "digits_cnn"
    xv, yv = ds_mod.read(data["std"]).split("val")
    loss, _ = adapter._evaluate(module, adapter._loss_fn(module, "multiclass"), xv, yv.astype(np.int64), "multiclass")
    assert loss == pytest.approx(min(history["val_loss"]), rel=1e-4)
    assert len(history["loss"]) == meta.params["epochs_run"] <= 12
    # the same layers as the Keras digits_cnn: 53,002 parameters
    assert meta.extra["parameters"] == sum(p.numel() for p in module.parameters()) == 53002


def test_runner_is_eager_torch_with_threads_and_any_batch(own, data):
    x, y = ds_mod.read(data["std"]).split("test")
    runner = formats.load(own["dir"], threads=1)
    assert runner.runtime_config["threads"] == 1 and runner.accepted_batches is None
    probs = bench.predict_all(runner, x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, adapter.predict(adapter.load(own["dir"]), x), atol=1e-6)
    assert runner.predict(x[:1]).shape == (1, 10) and runner.predict(x[:37]).shape == (37, 10)


def test_onnx_export_has_a_dynamic_batch_and_matches_eager_torch(own, data):
    import onnxruntime as ort

    module = adapter.load(own["dir"])
    proto = adapter.export_onnx(module, variant.read(own["dir"]).input, opset=17)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    assert "max abs error vs eager torch" in {p.key: p.value for p in proto.metadata_props}["kfopt_check"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, _ = ds_mod.read(data["std"]).split("test")
    for n in (1, 64):
        got = session.run(None, {session.get_inputs()[0].name: x[:n]})[0]
        np.testing.assert_allclose(got, adapter.predict(module, x[:n]), atol=1e-5)


def test_bf16_autocast_training_keeps_float32_weights(data, tmp_path):
    metrics = torch_train.run(data["std"], tmp_path / "bf16", architecture="digits_cnn", epochs=3, batch_size=32,
                              learning_rate=2e-3, patience=0, mixed_precision="mixed_bfloat16", seed=1)
    assert metrics["test_accuracy"] > 0.5 and metrics["epochs"] == 3
    program = torch_fmt.load_program(tmp_path / "bf16" / torch_fmt.FILENAME)
    assert {v.dtype for v in program.state_dict.values()} == {torch.float32}
    assert variant.read(tmp_path / "bf16").params["mixed_precision"] == "mixed_bfloat16"


def test_capabilities_own_model_vs_brought(own, resnet_pt2, onnx_file):
    assert {c for c in ("fine_tune", "prune", "distill", "qat", "tflite")
            if frameworks.has(variant.read(own["dir"]), c)} == {"fine_tune", "prune", "distill"}
    for brought_dir in (resnet_pt2["baseline"], onnx_file["baseline"]):
        assert not any(frameworks.has(variant.read(brought_dir), c) for c in ("fine_tune", "prune", "distill"))


def test_tpu_row_is_skipped_with_the_honest_reason(own, data, tmp_path):
    """No torch_xla for torch 2.13 on PyPI (2.9.0 needs torch 2.9) and no StableHLO lowering in torch.export."""
    import importlib.util

    from kfopt.accelerate import xla_stage

    assert importlib.util.find_spec("torch_xla") is None
    assert not [name for name in dir(torch.export) if "hlo" in name.lower()]
    xla_stage.run(data["std"], own["dir"], tmp_path / "xla")
    meta = variant.read(tmp_path / "xla" / "xla")
    assert meta.skipped and "torch_xla" in meta.reason and "StableHLO" in meta.reason


def test_structured_pruning_removes_channels_and_is_timed_against_unpruned(own, data, tmp_path):
    """Searched over two channel ratios (both within a budget that lets everything pass): the faster is kept,
    the milder one counting as equally fast within timing noise, so the most aggressive wins a tie."""
    from kfopt.optimize import prune, torch_prune

    prune.run(own["dir"], data["std"], tmp_path / "pruned", sparsities=[0.5, 0.25], epochs=2, calibration_samples=64,
              accuracy_budget=100.0, min_agreement=0.0)
    meta = variant.read(tmp_path / "pruned" / "pruned_50")
    assert not (tmp_path / "pruned" / "pruned_25").exists()
    record = meta.extra["search"]
    assert [p["setting"] for p in record["points"]] == ["0.25", "0.5"] and record["objective"] == "p50_ms"
    mild, kept = record["points"]
    assert kept["p50_ms"] <= mild["p50_ms"] * (1 + torch_prune.TIMING_NOISE) and kept["macs"] < mild["macs"]
    assert all(1 <= p["epochs_run"] <= 2 and p["seconds"] > 0 for p in record["points"])
    assert meta.extra["recipe"]["epochs_run"] == kept["epochs_run"]
    assert (meta.status, meta.format, meta.technique) == ("ok", "torch", "prune")
    assert meta.extra["macs_after"] < 0.5 * meta.extra["macs_before"]  # half the channels of both convolutions
    assert meta.extra["parameters_after"] < 0.5 * meta.extra["parameters_before"]
    program = torch_fmt.load_program(tmp_path / "pruned" / "pruned_50" / torch_fmt.FILENAME)
    assert program.state_dict["conv1.weight"].shape[0] == 16 and program.state_dict["out.weight"].shape[0] == 10
    latency = meta.extra["latency_vs_unpruned"]
    for bs in ("1", "64"):  # measured, not asserted faster: a pruning that does not speed up says so
        assert latency[bs]["speedup"] == pytest.approx(latency[bs]["unpruned_p50_ms"] / latency[bs]["pruned_p50_ms"],
                                                       rel=1e-2)
    assert latency["speeds_up"] == (latency["64"]["speedup"] > 1)
    assert "in_stage_check" in meta.extra
    x, _ = ds_mod.read(data["std"]).split("test")
    onnx_dir = tmp_path / "pruned" / "pruned_50_onnx_fp32"
    np.testing.assert_allclose(formats.load(onnx_dir).predict(x), formats.load(onnx_dir.parent / "pruned_50").predict(x),
                               atol=1e-5)
    assert variant.read(tmp_path / "pruned" / "pruned_50_onnx_int8").status == "ok"


def test_distillation_into_a_narrower_torch_student(own, data, tmp_path):
    from kfopt.optimize import distill

    distill.run(own["dir"], data["std"], tmp_path / "d", epochs=3, student_width=0.5, calibration_samples=64)
    meta = variant.read(tmp_path / "d" / "student")
    assert (meta.status, meta.format, meta.technique) == ("ok", "torch", "distill")
    assert meta.extra["parameters"] < 0.5 * meta.extra["teacher_parameters"]
    program = torch_fmt.load_program(tmp_path / "d" / "student" / torch_fmt.FILENAME)
    assert program.state_dict["conv1.weight"].shape[0] == 16  # half of the teacher's 32 filters
    assert meta.extra["recipe"]["best_val_loss"] == min(meta.extra["history"]["val_loss"])
    assert meta.extra["recipe"]["epochs_run"] == len(meta.extra["history"]["val_accuracy"]) <= 3
    assert [p["setting"] for p in meta.extra["search"]["points"]] == ["0.5"]
    assert variant.read(tmp_path / "d" / "student_onnx_fp32").status == "ok"
    assert variant.read(tmp_path / "d" / "student_tflite_int8").skipped


def test_torch_width_search_asks_the_teacher_once_and_keeps_the_narrowest_passing(own, data, tmp_path,
                                                                                  monkeypatch):
    from kfopt import passes
    from kfopt.optimize import torch_distill

    calls = []
    real = torch_distill.teacher_outputs
    monkeypatch.setattr(torch_distill, "teacher_outputs", lambda t, ds: calls.append(1) or real(t, ds))
    ds = ds_mod.read(data["std"])
    ctx = passes.Context.for_stage(ds, own["dir"], 16, 100.0, 0.0, tmp_path)  # every student passes
    width, kept, record = torch_distill.searched_student(adapter.load(own["dir"]), "digits_cnn", ds, ctx,
                                                         (0.75, 0.5, 0.25), temperature=4.0, alpha=0.1, epochs=2,
                                                         patience=5, seed=1)
    assert calls == [1]  # one teacher pass for every width
    assert [p["setting"] for p in record["points"]] == ["0.75", "0.25"] and width == 0.25 == float(record["kept"])
    assert record["points"][0]["parameters"] > kept.parameters == record["points"][1]["parameters"]
    assert kept.model.conv1.weight.shape[0] == 8  # a quarter of the teacher's 32 filters
    fresh = torch_architectures.build("digits_cnn", ds.schema.feature_shape, 10, 0.25)
    teacher = adapter.load(own["dir"])
    assert torch_distill.inherit_weights(fresh, teacher) == len(fresh.state_dict())  # starts from the teacher
    assert torch.equal(fresh.conv1.weight, teacher.conv1.weight[:8, :])
    assert all(p["passed"] and 1 <= p["epochs_run"] <= 2 and p["seconds"] > 0 for p in record["points"])


def test_a_brought_program_is_not_pruned_or_distilled(resnet_pt2, data, tmp_path):
    from kfopt.optimize import distill, prune

    prune.run(resnet_pt2["baseline"], data["raw"], tmp_path / "pruned", sparsities=[0.5], epochs=2)
    distill.run(resnet_pt2["baseline"], data["raw"], tmp_path / "distilled", epochs=1)
    for vdir in variant.discover(tmp_path):
        meta = variant.read(vdir)
        assert meta.skipped and ("pruning" in meta.reason or "distillation" in meta.reason), meta.name


def test_pt2e_int8_runs_compiled_and_agrees_with_the_baseline(own, data, tmp_path):
    """torchao's X86InductorQuantizer through the quantize stage, run by torch.compile (Inductor, freezing), and
    the fp32 program compiled the same way."""
    from kfopt.optimize import quantize

    quantize.run(own["dir"], data["std"], tmp_path / "q", qat=False, calibration_samples=64)
    meta = variant.read(tmp_path / "q" / "pt2e_int8")
    assert (meta.status, meta.format, meta.precision) == ("ok", "torch_pt2e", "int8")
    assert meta.extra["in_stage_check"]["passed"], meta.extra["in_stage_check"]
    runner = formats.load(tmp_path / "q" / "pt2e_int8", threads=1)
    ops = {str(n.target) for n in runner.program.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in op for op in ops) and any("dequantize_per_channel" in op for op in ops)
    x, _ = ds_mod.read(data["std"]).split("test")
    base = adapter.predict(adapter.load(own["dir"]), x)
    assert (bench.predict_all(runner, x).argmax(1) == base.argmax(1)).mean() >= 0.97
    assert variant.read(tmp_path / "q" / "tflite_int8").skipped  # Keras-only, said so
    assert "switched off" in variant.read(tmp_path / "q" / "pt2e_qat_int8").reason.lower()  # qat=False
    compiled = variant.read(tmp_path / "q" / "torch_compile")  # the fp32 program through the same runner
    assert (compiled.status, compiled.format, compiled.precision) == ("ok", "torch_compile", "fp32")
    np.testing.assert_allclose(bench.predict_all(formats.load(tmp_path / "q" / "torch_compile"), x), base, atol=1e-5)


# -- models kfopt did not build, brought as .pt2 ---------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 conv-BN, a 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """A torchvision-layout ResNet (conv1/bn1/relu, layer1..2 of BasicBlocks, avgpool, fc) on NHWC input."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x.permute(0, 3, 1, 2) / 16.0)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # logits: kfopt appends the softmax


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual if same shape."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)),
            InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, num_classes))

    def forward(self, x):
        x = self.features(x.permute(0, 3, 1, 2) / 16.0)
        return torch.softmax(self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)), dim=-1)


def _fit(module: nn.Module, dataset, epochs: int = 4) -> nn.Module:
    """A user's own training loop, elsewhere: a few epochs of Adam."""
    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in ds_mod.read(dataset).split("train"))
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()
    for _ in range(epochs):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            out = module(x[i:i + 32])
            loss = (nn.functional.nll_loss(torch.log(out + 1e-7), y[i:i + 32])
                    if isinstance(module, MobileNetV2) else nn.functional.cross_entropy(out, y[i:i + 32]))
            loss.backward()
            opt.step()
    return module.eval()


def _save_pt2(module: nn.Module, path, example_batch: int = 2, dynamic: bool = True, shape=(8, 8, 1)):
    example = torch.zeros(example_batch, *shape)
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: BATCH},) if dynamic else None)
    torch.export.save(program, str(path))
    return path


def _bring(data, path, name):
    out = data["root"] / name
    metrics = existing.run(data["raw"], out, model_uri=str(path))
    return {"baseline": out, "metrics": metrics, "path": path}


@pytest.fixture(scope="module")
def resnet_pt2(data):
    path = _save_pt2(_fit(ResNet(), data["raw"]), data["root"] / "resnet.pt2")
    return _bring(data, path, "resnet_baseline")


def test_brought_resnet_pt2_becomes_a_torch_baseline_and_exports(resnet_pt2, data, tmp_path):
    from kfopt import export

    meta = variant.read(resnet_pt2["baseline"])
    assert (meta.format, meta.framework, meta.technique) == ("torch", "torch", "provided")
    assert meta.extra["appended_output_activation"] == "softmax"  # the ResNet ends in logits
    assert meta.extra["input_check"]["static_batch"] is None
    assert resnet_pt2["metrics"]["test_accuracy"] > 0.3 and not resnet_pt2["metrics"]["implausible_baseline"]
    x, _ = ds_mod.read(data["raw"]).split("test")
    probs = formats.load(resnet_pt2["baseline"]).predict(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    export.run(resnet_pt2["baseline"], tmp_path / "exports", tflite=True, onnx=True)
    onnx_dir = tmp_path / "exports" / "onnx_fp32"
    assert variant.read(onnx_dir).status == "ok"
    np.testing.assert_allclose(formats.load(onnx_dir).predict(x), probs, atol=1e-5)
    tflite = variant.read(tmp_path / "exports" / "tflite_fp32")
    assert tflite.skipped and "torch" in tflite.reason


def test_pt2_from_gcs(resnet_pt2, data, gcs, tmp_path):
    """The same .pt2 from gs:// (a real GCS-protocol server on 127.0.0.1): the same baseline."""
    from kfopt import storage

    uri = gcs.uri("models/resnet.pt2")
    storage.write_bytes(uri, resnet_pt2["path"].read_bytes())
    metrics = existing.run(data["raw"], tmp_path / "b", model_uri=uri)
    assert metrics["test_accuracy"] == resnet_pt2["metrics"]["test_accuracy"]
    assert variant.read(tmp_path / "b").params["model_uri"] == uri


def test_brought_mobilenet_pt2_ending_in_softmax_is_kept_as_is(data, tmp_path):
    path = _save_pt2(_fit(MobileNetV2(), data["raw"]), tmp_path / "mobilenet.pt2")
    brought = _bring(data, path, "mobilenet_baseline")
    meta = variant.read(brought["baseline"])
    assert meta.extra["appended_output_activation"] is None
    assert brought["metrics"]["test_accuracy"] > 0.3
    program = torch_fmt.load_program(brought["baseline"] / torch_fmt.FILENAME)
    groups = [n.args[6] for n in program.graph.nodes if str(n.target) == "aten.conv2d.default" and len(n.args) > 6]
    assert max(groups) > 1  # the depthwise convolutions survived the round trip


def test_static_batch_program_is_timed_only_at_its_batch(data, tmp_path, capsys):
    path = _save_pt2(_fit(ResNet(width=8), data["raw"], epochs=1), tmp_path / "static.pt2", example_batch=1,
                     dynamic=False)
    brought = _bring(data, path, "static_baseline")
    assert "static batch of 1" in capsys.readouterr().out
    meta = variant.read(brought["baseline"])
    assert meta.extra["input_check"]["static_batch"] == 1
    runner = formats.load(brought["baseline"])
    assert runner.accepted_batches == (1,)
    x, _ = ds_mod.read(data["raw"]).split("test")
    assert runner.predict(x[:5]).shape == (5, 10)  # fed one sample at a time
    result = bench.measure_variant(brought["baseline"], data["raw"], [1, 64], 1, 1, 5, 0.1, 0.5,
                                   tmp_path / "pred.npy")
    assert set(result["latency"]) == {"1"} and "runs only at batch 1" in result["not_timed"]["64"]
    with pytest.raises(ModelError, match="static batch of 1.*dynamic_shapes"):
        adapter.export_onnx(adapter.load(brought["baseline"]), meta.input)
    from kfopt import export

    export.run(brought["baseline"], tmp_path / "exports")  # the export stage says so instead of failing
    onnx_meta = variant.read(tmp_path / "exports" / "onnx_fp32")
    assert onnx_meta.skipped and "static batch of 1" in onnx_meta.reason and "dynamic_shapes" in onnx_meta.reason


# -- ONNX brought from elsewhere --------------------------------------------------------------------------


def _onnx_of(module: nn.Module, path, shape=(8, 8, 1)):
    torch.onnx.export(module.eval(), (torch.zeros(2, *shape),), str(path), dynamo=True, external_data=False,
                      dynamic_shapes=({0: BATCH},), verbose=False)
    return path


@pytest.fixture(scope="module")
def onnx_file(data):
    path = _onnx_of(_fit(ResNet(width=8), data["raw"], epochs=3), data["root"] / "resnet.onnx")
    return _bring(data, path, "onnx_baseline")


def test_brought_onnx_becomes_an_onnx_baseline(onnx_file, data, tmp_path):
    from kfopt import export

    meta = variant.read(onnx_file["baseline"])
    assert (meta.format, meta.framework, meta.runtime) == ("onnx", "onnx", "onnxruntime")
    assert meta.extra["appended_output_activation"] == "softmax"
    x, y = ds_mod.read(data["raw"]).split("test")
    probs = formats.load(onnx_file["baseline"]).predict(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert onnx_file["metrics"]["test_accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    export.run(onnx_file["baseline"], tmp_path / "exports")
    assert variant.read(tmp_path / "exports" / "onnx_fp32").status == "ok"
    assert frameworks.detect(onnx_file["path"]) is onnx_adapter


# -- bad input: one clear error each ----------------------------------------------------------------------


class TwoInputs(nn.Module):
    def forward(self, x, z):
        return torch.softmax(x.flatten(1)[:, :10] + z.flatten(1)[:, :10], dim=-1)


class TwoOutputs(nn.Module):
    def forward(self, x):
        return torch.softmax(x.flatten(1)[:, :10], -1), x.flatten(1)[:, :10]


def _error(data, path) -> str:
    with pytest.raises(KfoptError) as info:
        existing.run(data["raw"], data["root"] / "never", model_uri=str(path))
    assert not (data["root"] / "never").exists()  # nothing half-written
    return str(info.value)


def test_pickle_is_refused_with_the_command_that_saves_a_pt2(data, tmp_path):
    for suffix in (".pt", ".pth"):
        path = tmp_path / f"model{suffix}"
        torch.save(ResNet(width=4), path)
        message = _error(data, path)
        assert "pickle" in message and "torch.export.save(torch.export.export(" in message


def test_pt2_with_the_wrong_input_shape(data, tmp_path):
    path = _save_pt2(ResNet(width=4), tmp_path / "big.pt2", shape=(28, 28, 1))
    message = _error(data, path)
    assert "(None, 28, 28, 1)" in message and "(8, 8, 1)" in message


def test_more_than_one_input_or_output(data, tmp_path):
    x = torch.zeros(2, 8, 8, 1)
    torch.export.save(torch.export.export(TwoInputs(), (x, x)), str(tmp_path / "two_in.pt2"))
    assert "2 inputs and 1 outputs" in _error(data, tmp_path / "two_in.pt2")
    torch.export.save(torch.export.export(TwoOutputs(), (x,)), str(tmp_path / "two_out.pt2"))
    assert "1 inputs and 2 outputs" in _error(data, tmp_path / "two_out.pt2")
    torch.onnx.export(TwoOutputs().eval(), (x,), str(tmp_path / "two_out.onnx"), dynamo=True, verbose=False)
    assert "1 inputs and 2 outputs" in _error(data, tmp_path / "two_out.onnx")


def test_onnx_with_a_dynamic_rank(data, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "rank.onnx"))
    assert "no fixed rank" in _error(data, tmp_path / "rank.onnx")


def test_onnx_output_width_must_match_the_classes(data, tmp_path):
    path = _onnx_of(ResNet(num_classes=3, width=4), tmp_path / "three.onnx")
    assert "10 classes" in _error(data, path)


def test_corrupt_pt2(data, tmp_path):
    good = _save_pt2(ResNet(width=4), tmp_path / "good.pt2").read_bytes()
    (tmp_path / "cut.pt2").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.pt2").write_bytes(b"not a zip archive at all" * 10)
    for name in ("cut.pt2", "noise.pt2"):
        assert "not a readable torch.export program" in _error(data, tmp_path / name)


def test_framework_torch_with_a_keras_only_architecture(monkeypatch):
    from kfopt import config
    from kfopt.models import architectures

    raw = {"model": {"architecture": "digits_cnn", "framework": "torch"}}
    assert config.from_dict(raw).model.framework == "torch"
    # a Keras-only name: every bundled architecture exists in both, so one is registered for Keras alone here
    monkeypatch.setitem(architectures.ARCHITECTURES, "keras_only_net", architectures.digits_cnn)
    assert config.from_dict({"model": {"architecture": "keras_only_net"}}).model.framework == "keras"
    with pytest.raises(ConfigError, match="'keras_only_net' exists only for Keras.*framework: keras"):
        config.from_dict({"model": {"architecture": "keras_only_net", "framework": "torch"}})
    with pytest.raises(ConfigError, match="model.framework must be keras or torch"):
        config.from_dict({"model": {"framework": "jax"}})
    with pytest.raises(ConfigError, match="exists only for Keras"):
        torch_architectures.build("keras_only_net", [8, 8, 1], 10)


def test_cli_refuses_an_architecture_torch_lacks_before_the_pipeline_starts(tmp_path, capsys):
    from kfopt.cli import main

    code = main(["run", "--runs-dir", str(tmp_path / "runs"), "--config", "digits_cnn_torch",
                 "--set", "model.architecture=vgg"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("kfopt: error:") and "known in torch: digits_cnn" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


# -- the whole pipeline ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_digits_cnn_torch_through_kfp_local(tmp_path):
    """`kfopt run --config digits_cnn_torch` on a small slice: a torch eager baseline and the ONNX passes after it."""
    from kfopt.cli import main

    small = ["--set", "data.limit=400", "--set", "train.epochs=4", "--set", "bench.max_seconds=0.2",
             "--set", "augment.factor=0.5", "--set", "prune.enabled=false", "--set", "distill.enabled=false",
             "--set", "tensorrt.enabled=false"]  # pruning, distillation: tested above, stage by stage
    assert main(["run", "--config", "digits_cnn_torch", "--runs-dir", str(tmp_path), *small]) == 0
    report = json.loads(((tmp_path / "latest").resolve() / "report.json").read_text())
    rows = {(r["name"], r["hardware"]): r for r in report["rows"]}
    base = rows[("baseline", "cpu")]
    assert (base["status"], base["format"]) == ("ok", "torch") and set(base["latency"]) == {"1", "64"}
    assert base["accuracy"] > 0.5
    for name in ("onnx_fp32", "onnx_int8"):
        assert rows[(name, "cpu")]["status"] == "ok", name
    assert rows[("onnx_fp32", "cpu")]["verification"]["agreement"] == 1.0  # same weights, another runtime
    for name in ("tflite_fp32", "tflite_qat_int8"):
        assert rows[(name, "cpu")]["status"] == "skipped" and "torch" in rows[(name, "cpu")]["reason"]
    assert "torch_xla" in rows[("xla", "tpu")]["reason"]
    for name in ("pt2e_int8", "torch_compile"):  # torch.compile in the benchmark's own worker
        assert rows[(name, "cpu")]["status"] == "ok", name
    assert report["choices"]["cpu"]["chosen"] in {n for (n, hw), r in rows.items() if r["status"] == "ok"}


def test_a_static_batch_onnx_is_timed_only_at_its_batch_and_answers_any_size(data, tmp_path):
    """An ONNX graph exported with batch 1 fixed: the runner says it accepts only 1 and feeds larger
    inputs in chunks, so verification at any size gives the same answers as one sample at a time."""
    import onnx
    from onnx import TensorProto, helper

    from kfopt import formats, variant

    n = 64
    w = np.random.default_rng(0).normal(size=(n, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["output"], axis=-1)],
        "static", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())])
    folder = tmp_path / "static_onnx"
    folder.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ORT 1.31 reads (onnx 1.23 writes a newer IR by default)
    onnx.save(model, str(folder / "model.onnx"))
    variant.write(folder, variant.VariantMeta(
        name="static_onnx", format="onnx", precision="fp32", target="cpu", framework="onnx", runtime="onnxruntime",
        input=variant.TensorSpec("input", [1, n]), output=variant.TensorSpec("output", [1, 10])))
    runner = formats.load(folder, threads=1)
    assert runner.accepted_batches == (1,)
    x = np.random.default_rng(1).normal(size=(7, n)).astype(np.float32)
    one_by_one = np.concatenate([runner.predict(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(runner.predict(x), one_by_one, rtol=1e-6)


def test_breast_cancer_mlp_torch_through_kfp_local(tmp_path):
    """`kfopt run --config breast_cancer_mlp_torch` (binary, tabular) end to end, with its own pruning
    and distillation: every torch technique on the second bundled model, through the real runner."""
    from kfopt.cli import main

    small = ["--set", "train.epochs=5", "--set", "bench.max_seconds=0.1", "--set", "bench.batch_sizes=[1, 64]",
             "--set", "prune.sparsities=[0.5]", "--set", "prune.epochs=2", "--set", "distill.epochs=3",
             "--set", "distill.student_width=[0.5]",
             "--set", "tensorrt.enabled=false", "--set", "openvino.enabled=false"]
    assert main(["run", "--config", "breast_cancer_mlp_torch", "--runs-dir", str(tmp_path), *small]) == 0
    report = json.loads(((tmp_path / "latest").resolve() / "report.json").read_text())
    rows = {(r["name"], r["hardware"]): r for r in report["rows"]}
    base = rows[("baseline", "cpu")]
    assert (base["status"], base["format"]) == ("ok", "torch") and base["accuracy"] > 0.8  # binary: chance 0.5
    for name in ("onnx_fp32", "onnx_int8", "pruned_50", "pruned_50_onnx_fp32", "student", "sparse_50",
                 "sparse_50_onnx_fp32", "pt2e_qat_int8"):  # binary: global pruning and PT2E QAT too
        assert rows[(name, "cpu")]["status"] == "ok", (name, rows[(name, "cpu")].get("reason"))
    assert report["choices"]["cpu"]["chosen"] in {n for (n, hw), r in rows.items() if r["status"] == "ok"}
