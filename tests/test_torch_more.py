"""Torch global-magnitude pruning (size) and PT2E QAT (issue 11), on real torch 2.13 + torchao.

kfopt's own digits CNN trains for a few epochs on a 300-sample digits slice; the brought model is a small
network kfopt did not build (conv-BN-ReLU, dropout, softmax head, exported in eval mode), so QAT is
shown to work on an exported graph and not only on kfopt's own modules.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from kfopt import bench, formats, passes, variant  # noqa: E402
from kfopt.data import dataset as ds_mod  # noqa: E402
from kfopt.data import preprocess  # noqa: E402
from kfopt.errors import ConfigError  # noqa: E402
from kfopt.formats import torch as torch_fmt  # noqa: E402
from kfopt.frameworks import torch as adapter  # noqa: E402
from kfopt.models import existing, train  # noqa: E402
from kfopt.passes import pt2e_qat  # noqa: E402
from kfopt.passes.check import InStageCheck, calibration_set  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_more")
    preprocess.run("digits", root / "std", limit=300, seed=3)
    preprocess.run("digits", root / "raw", limit=300, seed=3, normalize="none")
    return {"root": root, "std": root / "std", "raw": root / "raw"}


@pytest.fixture(scope="module")
def own(data):
    out = data["root"] / "own"
    train.run(data["std"], out, architecture="digits_cnn", framework="torch", epochs=6, patience=2, batch_size=32,
              learning_rate=2e-3, seed=1)
    return out


@pytest.fixture(scope="module")
def pruned(own, data):
    """The prune stage on the torch baseline at 80%: both kinds, structured and global magnitude."""
    from kfopt.optimize import prune

    out = data["root"] / "pruned"
    metrics = prune.run(own, data["std"], out, sparsities=[0.8], epochs=2, calibration_samples=64)
    return {"dir": out, "metrics": metrics}


def test_global_magnitude_pruning_zeroes_weights_and_keeps_plain_ones(pruned, own, data):
    meta = variant.read(pruned["dir"] / "sparse_80")
    assert (meta.status, meta.format, meta.technique) == ("ok", "torch", "prune")
    sparsity = meta.extra["sparsity"]
    assert sparsity["overall"] == pytest.approx(0.8, abs=0.005)  # global: 80% of all conv/linear weights
    assert set(sparsity["layers"]) == {"conv1", "conv2", "fc", "out"}
    assert len(set(sparsity["layers"].values())) > 1  # ranked together, so layers lose different shares
    program = torch_fmt.load_program(pruned["dir"] / "sparse_80" / torch_fmt.FILENAME)
    state = program.state_dict
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # prune.remove made them plain weights
    assert float((state["fc.weight"] == 0).float().mean()) == pytest.approx(sparsity["layers"]["fc"], abs=1e-4)
    assert state["conv1.weight"].shape == adapter.load(own).conv1.weight.shape  # nothing removed, only zeroed
    assert meta.extra["size_gzip_bytes"] < 0.6 * meta.extra["unpruned_size_gzip_bytes"]
    assert meta.extra["size_bytes"] == pytest.approx(bench.sizes(own, variant.read(own))["size_bytes"], rel=0.01)
    latency = meta.extra["latency_vs_unpruned"]  # measured, and recorded either way
    assert latency["speeds_up"] == (latency["64"]["speedup"] > 1.1)  # zeros still multiply: not faster past noise
    assert "in_stage_check" in meta.extra


def test_the_prune_chain_follows_both_kinds(pruned, data):
    names = {p.name for p in variant.discover(pruned["dir"])}
    assert {"pruned_80", "pruned_80_onnx_fp32", "pruned_80_onnx_int8", "sparse_80", "sparse_80_onnx_fp32",
            "sparse_80_onnx_int8", "sparse_80_tflite_int8"} <= names
    assert not any(n.startswith(".") for n in names)
    assert pruned["metrics"]["variants"] == len(names)
    x, _ = ds_mod.read(data["std"]).split("test")
    onnx_dir = pruned["dir"] / "sparse_80_onnx_fp32"
    np.testing.assert_allclose(formats.load(onnx_dir).predict(x), formats.load(pruned["dir"] / "sparse_80").predict(x),
                               atol=1e-5)
    int8 = variant.read(pruned["dir"] / "sparse_80_onnx_int8")
    assert int8.status == "ok" and int8.extra["size_gzip_bytes"] < variant.read(onnx_dir).extra["size_gzip_bytes"]
    assert variant.read(pruned["dir"] / "sparse_80_tflite_int8").skipped  # no direct TFLite for torch


def test_a_spent_budget_tries_one_sparsity_and_names_the_rest(own, data, tmp_path):
    """The global-magnitude search alone (no chain after it), its budget spent by the first point."""
    from kfopt.optimize import torch_sparse

    metrics = torch_sparse.run(own, data["std"], tmp_path / "s", sparsities=[0.8, 0.5, 0.9], epochs=2,
                               calibration_samples=32, accuracy_budget=100.0, min_agreement=0.0, confidence=0.95, configs={}, chain=(),
                               time_budget_s=0.001, log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sparse_50"]
    record = variant.read(tmp_path / "s" / "sparse_50").extra["search"]
    assert [p["setting"] for p in record["points"]] == ["0.5"] and record["not_tried"] == ["0.8", "0.9"]
    assert record["stopped"] == "time budget spent" and metrics["sparse_points_tried"] == 1
    assert record["points"][0]["size_gzip_bytes"] == variant.read(tmp_path / "s" / "sparse_50").extra["size_gzip_bytes"]


def _ctx(baseline, dataset, work):
    ds = ds_mod.read(dataset)
    return passes.Context(ds, calibration_set(ds, 64), InStageCheck.against_baseline(baseline, ds, 0.5, 0.97), work)


def _int8_ops(vdir) -> set[str]:
    runner = formats.load(vdir, threads=1)
    return {str(n.target) for n in runner.program.graph.nodes if n.op == "call_function"}


def test_pt2e_qat_of_kfopts_own_model_runs_compiled(own, data, tmp_path):
    meta = passes.apply(pt2e_qat, own, tmp_path, _ctx(own, data["std"], tmp_path), pt2e_qat.Config(epochs=2))
    assert (meta.name, meta.status, meta.format, meta.precision, meta.technique) == (
        "pt2e_qat_int8", "ok", "torch_pt2e", "int8", "qat")
    assert meta.extra["in_stage_check"]["passed"], meta.extra["in_stage_check"]
    ops = _int8_ops(tmp_path / "pt2e_qat_int8")
    assert any("quantize_per_tensor" in op for op in ops) and any("dequantize_per_channel" in op for op in ops)
    x, _ = ds_mod.read(data["std"]).split("test")
    runner = formats.load(tmp_path / "pt2e_qat_int8", threads=1)
    base = adapter.predict(adapter.load(own), x)
    assert (bench.predict_all(runner, x).argmax(1) == base.argmax(1)).mean() >= 0.95


class ConvBN(nn.Module):
    """Not kfopt's: conv-BN-ReLU twice, global pooling, dropout, a softmax head, on NHWC pixels 0-16."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        x = self.body(x.permute(0, 3, 1, 2) / 16.0)
        return torch.softmax(self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)), dim=-1)


def test_pt2e_qat_works_on_a_brought_program(data, tmp_path):
    """prepare_qat_pt2e on the exported graph (batch norm folded, trained through move_exported_model_to_train)."""
    torch.manual_seed(0)
    module = ConvBN()
    x, y = (torch.from_numpy(a) for a in ds_mod.read(data["raw"]).split("train"))
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(4):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            nn.functional.nll_loss(torch.log(module(x[i:i + 32]) + 1e-7), y[i:i + 32]).backward()
            opt.step()
    program = torch.export.export(module.eval(), (torch.zeros(2, 8, 8, 1),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "convbn.pt2"))
    baseline = tmp_path / "baseline"
    existing.run(data["raw"], baseline, model_uri=str(tmp_path / "convbn.pt2"))
    meta = passes.apply(pt2e_qat, baseline, tmp_path, _ctx(baseline, data["raw"], tmp_path), pt2e_qat.Config(1))
    assert meta.status == "ok", meta.reason
    ops = _int8_ops(tmp_path / "pt2e_qat_int8")
    assert not any("batch_norm" in op for op in ops)  # folded into the convolutions
    assert any("dequantize_per_channel" in op for op in ops)
    assert "in_stage_check" in meta.extra
    xt, _ = ds_mod.read(data["raw"]).split("test")
    got = bench.predict_all(formats.load(tmp_path / "pt2e_qat_int8", threads=1), xt, batch=32)
    assert got.shape == (len(xt), 10) and np.allclose(got.sum(1), 1, atol=1e-3)


def test_pt2e_qat_refuses_what_is_not_a_torch_fp32_program_and_bad_epochs(own):
    meta = variant.read(own)
    assert pt2e_qat.refusal(meta) is None
    assert "torch fp32 program" in pt2e_qat.refusal(dataclasses.replace(meta, format="onnx"))
    assert "torch fp32 program" in pt2e_qat.refusal(dataclasses.replace(meta, precision="int8"))
    with pytest.raises(ConfigError, match="qat_epochs"):
        pt2e_qat.Config(epochs=0)
