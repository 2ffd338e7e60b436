"""Verification at every benchmarked batch size: a variant right at batch 64 and wrong at batch 1 is never
chosen for latency:1 (issue 12: OpenVINO int8 gave 0.98 accuracy at batch 64 and 0.10 at batch 1).

Everything is real: a brought ONNX classifier (a linear model fitted here by least squares) is the
baseline, and its batch-dependent twin is a genuine ONNX graph that adds a large logit to class 0 when
the batch has one row (Shape → Gather → Equal), run by ONNX Runtime in the benchmark's worker processes.
"""

import numpy as np
import pytest

from kfopt import bench, report, select, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.data import preprocess
from kfopt.export import child_meta
from kfopt.formats import onnx as onnx_fmt
from kfopt.models import existing


def _linear_classifier(x, y, classes, *, wrong_at_batch_1):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    flat = x.reshape(len(x), -1)
    a = np.hstack([flat, np.ones((len(flat), 1))])
    coef = np.linalg.lstsq(a, np.eye(classes)[y], rcond=None)[0].astype(np.float32)
    inits = [numpy_helper.from_array(coef[:-1], "w"), numpy_helper.from_array(coef[-1], "b"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape")]
    nodes = [helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    out = "logits"
    if wrong_at_batch_1:
        push = np.zeros(classes, np.float32)
        push[0] = 1000.0
        inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                  numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(push, "push")]
        nodes += [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["n"]),
                  helper.make_node("Equal", ["n", "one"], ["single"]),
                  helper.make_node("Cast", ["single"], ["single_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["single_f", "push"], ["term"]),
                  helper.make_node("Add", ["logits", "term"], ["skewed"])]
        out = "skewed"
    nodes.append(helper.make_node("Softmax", [out], ["probs"], axis=1))
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", *x.shape[1:]])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    import onnx

    root = tmp_path_factory.mktemp("verify_batches")
    preprocess.run("digits", root / "dataset", limit=500, seed=3)
    ds = ds_mod.read(root / "dataset")
    x, y = ds.split("train")
    onnx.save(_linear_classifier(x, y, ds.schema.num_classes, wrong_at_batch_1=False), str(root / "model.onnx"))
    existing.run(root / "dataset", root / "variants" / "baseline", model_uri=str(root / "model.onnx"))
    base = variant.read(root / "variants" / "baseline")
    skewed = _linear_classifier(x, y, ds.schema.num_classes, wrong_at_batch_1=True)
    onnx_fmt.write_variant(skewed, root / "variants" / "onnx_batchy",
                           child_meta(base, "onnx_batchy", technique="quantize", target="cpu"))
    summary = bench.run([root / "variants"], root / "dataset", root / "bench", baseline_dir=root / "variants" / "baseline",
                        batch_sizes=[1, 64], warmup=2, min_runs=6, max_seconds=0.2, log=lambda _: None)
    return {row["name"]: row for row in summary["results"]}, len(ds.split("test")[1]), root / "bench"


def test_each_timed_batch_is_verified_on_calls_of_that_batch(measured):
    rows, n_test, _ = measured
    batchy = rows["onnx_batchy"]["verification_by_batch"]
    assert set(batchy) == {"1", "64"}
    assert batchy["64"]["passed"] and not batchy["1"]["passed"]
    assert batchy["1"]["agreement"] < 0.5  # class 0 everywhere at batch 1
    assert batchy["1"]["samples"] == min(n_test, bench.VERIFY_CALLS)
    assert batchy["64"]["samples"] == n_test and n_test % 64  # the remainder of the last call is verified too
    assert all(v["passed"] for v in rows["baseline"]["verification_by_batch"].values())
    assert rows["onnx_batchy"]["verification"]["passed"]  # the batch-64 check alone would have let it through


def test_wrong_at_batch_1_is_never_chosen_for_latency_1(measured):
    rows, _, _ = measured
    every = list(rows.values())
    assert select.choose(every, ["cpu"], {"cpu": "latency:1"})["cpu"]["chosen"] == "baseline"
    alone = [rows["onnx_batchy"]]
    lat = select.choose(alone, ["cpu"], {"cpu": "latency:1"})["cpu"]
    assert lat["chosen"] is None and "wrong at batch 1" in lat["reason"]
    assert select.choose(alone, ["cpu"], {"cpu": "throughput:64"})["cpu"]["chosen"] == "onnx_batchy"
    assert select.choose(alone, ["cpu"], {"cpu": "size"})["cpu"]["chosen"] is None


def test_the_report_shows_pass_at_one_batch_and_fail_at_another(measured):
    rows, _, _ = measured
    rep = {"rows": list(rows.values())}
    cells = {r[0]: r[6] for r in report.table_rows(rep)}
    assert cells["onnx_batchy"] == "pass, FAIL@1" and cells["baseline"] == "pass"
    [line] = [ln for ln in report.not_measured(rep) if ln.startswith("onnx_batchy")]
    assert "passes at batch 64" in line and "wrong at batch 1" in line


def test_every_record_has_the_paired_interval_on_every_test_row(measured):
    """The real bench records of a real ONNX variant: the delta's interval and the rows behind it, all of them."""
    rows, n_test, _ = measured
    for name, row in rows.items():
        for record in (row["verification"], row["verification_by_batch"]["64"]):
            assert record["n_rows"] == n_test, name
            lo, hi = record["delta_ci_pp"]
            assert lo <= record["accuracy_delta_pp"] <= hi and record["confidence"] == 0.95
            assert record["discordant"] == record["wins"] + record["losses"] and 0 <= record["mcnemar_p"] <= 1
    assert rows["baseline"]["verification"]["delta_ci_pp"] == [0.0, 0.0]


def test_the_rendered_report_shows_the_interval_and_the_rows_too_few_to_tell(measured):
    """The report built from the real bench results, with one row's verification replaced by a constructed
    straddling one (3 of 360 rows lost against 0.5 pp): the cell, the budget sentence and the section."""
    rows, n_test, bench_dir = measured
    rep = report.build([bench_dir], "linear", ["cpu"])
    n, classes = 360, 10
    y = np.arange(n) % classes
    onehot = np.eye(classes, dtype=np.float32)
    lost = onehot[y].copy()
    lost[:3] = onehot[(y[:3] + 1) % classes]
    row = next(r for r in rep["rows"] if r["name"] == "onnx_batchy")
    row["verification"] = verify.compare(lost, onehot[y], y, "multiclass", 0.5, 0.97)
    md, text = report.markdown(rep), report.text_table(rep)
    page = report.html_page(rep, md)
    assert f"+0.00 pp [+0.00, +0.00], n={n_test}" in md  # the real baseline row
    assert "-0.83 pp [" in md and "], n=360" in md and "pass (too few rows to tell)" in md
    assert "more than the budget with 95% confidence" in md
    for rendered in (md, text, page):
        assert report.TOO_FEW_HEADING in rendered and "onnx_batchy: too few rows to tell" in rendered


class _Rows:
    """A runner that answers each row with its own index, and refuses any call not of exactly `batch` rows."""

    def __init__(self, batch):
        self.batch = batch

    def predict(self, x):
        assert len(x) == self.batch, len(x)
        return x[:, :1].astype(np.float32)


def test_batch_rows_caps_and_fills():
    assert bench.batch_rows(360, 1) == 360 and bench.batch_rows(360, 64) == 360
    assert bench.batch_rows(100, 256) == 100 and bench.batch_rows(100_000, 1) == bench.VERIFY_CALLS
    x = np.arange(360, dtype=np.float32).reshape(360, 1)
    for bs in (1, 64, 500):
        assert bench.predict_at_batch(_Rows(bs), x, bs)[:, 0].tolist() == list(range(360))
