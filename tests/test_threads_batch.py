"""Threads and batch (issue 12): each target's finalists at 1 thread and at the serving node's cores, a batch
sweep to saturation for a throughput objective, and a choice that names the threads and batch it assumes.

The real benchmark run uses a model kfopt did not build: a linear classifier fitted here by least squares,
brought as ONNX and run by ONNX Runtime in the benchmark's worker processes (no mocks).
"""

import copy

import numpy as np
import pytest
import yaml

from kfopt import bench, config, deployment, report, saturation, select, variant
from kfopt.errors import ConfigError


def test_threads_is_a_list_and_the_old_int_form_still_reads():
    assert config.RunConfig().bench.threads == [1]
    assert config.from_dict({"bench": {"threads": [1, 4]}}).bench.threads == [1, 4]
    assert config.from_dict({"bench": {"threads": 2}}).bench.threads == [2]  # an old file: no error
    assert config.thread_counts(3) == [3] and config.thread_counts((1, 8)) == [1, 8]


@pytest.mark.parametrize("bench_cfg, match", [
    ({"threads": [1, -2]}, "bench.threads must be a non-empty list of thread counts >= 0"),
    ({"threads": -1}, "bench.threads must be a non-empty list"),
    ({"threads": []}, "bench.threads must be a non-empty list"),
    ({"finalists": -1}, "bench.finalists must be >= 0"),
    ({"saturation_gain": 1.5}, "bench.saturation_gain must be in"),
    ({"saturation_steps": 0}, "bench.saturation_steps must be at least 1"),
])
def test_bad_bench_settings_fail_with_one_clear_message(bench_cfg, match):
    with pytest.raises(ConfigError, match=match):
        config.from_dict({"bench": bench_cfg})


GKE = yaml.safe_load((deployment.DEPLOYMENT_DIR / "gke.yaml").read_text())


def _deployment(tmp_path, targets):
    doc = copy.deepcopy(GKE)
    doc["targets"] = targets
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_deployment_files_say_the_serving_cores_per_target(tmp_path):
    assert deployment.load("gke").cores_for("cpu") == 8 and deployment.load("gke").cores_for("edge") == 4
    local = deployment.load("cpu-only")
    assert local.cores_for("cpu") == deployment.node_cores() >= 1  # auto: this machine's cores
    doc = copy.deepcopy(GKE)
    del doc["targets"]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert deployment.load(str(path)).cores_for("cpu") == deployment.node_cores()  # an old file: no error


@pytest.mark.parametrize("targets, match", [
    ({"cpu": {"cores": 0}}, r"'targets.cpu.cores' is 0; a serving node has at least 1 core"),
    ({"cpu": {"cores": 64}}, r"'targets.cpu.cores' is 64, above the cpu_limit \(8\) of benchmark_cpu"),
    ({"cpu": {"cores": "many"}}, r"'targets.cpu.cores' \('many'\) must be a whole number of cores or auto"),
    ({"gpu": {"cores": 4}}, r"'targets.gpu' is an unknown key; use one of: cpu, edge"),
    ({"cpu": {"threads": 4}}, r"'targets.cpu.threads' is an unknown key"),
])
def test_bad_cores_in_a_deployment_file_fail_clearly(tmp_path, targets, match):
    with pytest.raises(ConfigError, match=match):
        deployment.load(str(_deployment(tmp_path, targets)))


def test_thread_counts_per_target_come_from_the_serving_node(tmp_path):
    from kfopt import finalists

    plan = finalists.Plan.make(["cpu", "edge", "gpu"], None, [1, 4, 16], str(_deployment(tmp_path, {"cpu": {"cores": 8}})),
                               "cpu", 2, 0.05, 2)
    assert plan.serving["cpu"]["threads"] == [1, 4, 8]  # 16 is more than the node's 8 cores
    assert plan.serving["edge"]["cores"] == deployment.node_cores()  # not in the file: this node's
    assert "gpu" not in plan.serving  # measured by the gpu pool's benchmark, at the first thread count
    missing = finalists.Plan.make(["cpu"], None, [1], str(tmp_path / "gone.yaml"), "cpu", 2, 0.05, 2)
    assert missing.serving["cpu"]["cores"] == deployment.node_cores()
    assert "not readable here" in missing.serving["cpu"]["source"]


def test_doubling_batches_up_to_the_cap_and_a_static_program():
    assert saturation.doubling(64) == [1, 2, 4, 8, 16, 32, 64]
    assert saturation.doubling(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert saturation.doubling(64, accepted=[1, 64]) == [1, 64]


def test_the_sweep_stops_after_consecutive_doublings_below_the_gain():
    rising_then_flat = [100, 190, 350, 600, 620, 625, 650]  # batch 1..64
    assert saturation.best_and_stop(rising_then_flat[:5], 0.05, 2) == (3, False)  # one flat step: go on
    assert saturation.best_and_stop(rising_then_flat[:6], 0.05, 2) == (3, True)  # two in a row: stop at 32
    assert saturation.best_and_stop([100, 200, 205, 420], 0.05, 2) == (3, False)  # a pause, then a new best
    assert saturation.best_and_stop([100, 104], 0.05, 1) == (0, True)  # 4% is not more than 5%
    assert saturation.best_and_stop([100, 80, 70], 0.05, 2) == (0, True)  # slower at larger batches


def _lat(p50_by_batch):
    return {str(b): {"p50_ms": p, "throughput": b / p * 1e3} for b, p in p50_by_batch.items()}


def _row(name, by_threads, size=1000):
    first = next(iter(by_threads))
    return {"name": name, "format": "onnx", "hardware": "cpu", "status": "ok", "accuracy": 0.9, "threads": int(first),
            "latency": by_threads[first]["latency"], "size_gzip_bytes": size,
            "verification": {"passed": True, "accuracy_delta_pp": 0.0}, "by_threads": by_threads}


def test_the_choice_names_threads_and_batch_and_keeps_to_the_serving_node():
    row = _row("a", {"1": {"latency": _lat({1: 1.0, 64: 20.0})}, "4": {"latency": _lat({1: 0.3})},
                     "8": {"latency": _lat({1: 0.2})}})
    on_4 = select.choose([row], ["cpu"], {"cpu": "latency:1"}, {"cpu": {"cores": 4, "threads": [1, 4]}})["cpu"]
    assert (on_4["threads"], on_4["batch"], on_4["cores"]) == (4, 1, 4)
    assert "at batch 1, 4 threads" in on_4["reason"]
    on_2 = select.choose([row], ["cpu"], {"cpu": "latency:1"}, {"cpu": {"cores": 2, "threads": [1, 2]}})["cpu"]
    assert on_2["threads"] == 1  # 8 threads were measured, but a 2-core node cannot run them
    assert select.choose([row], ["cpu"], {"cpu": "latency:1"})["cpu"]["threads"] == 8  # no node given: any


def test_a_throughput_choice_takes_the_saturation_batch_that_verified():
    points = [{"batch": b, "throughput": t, "p50_ms": b / t * 1e3} for b, t in
              [(1, 100), (2, 190), (4, 350), (8, 600), (16, 620), (32, 625)]]
    sweep = {"points": points, "best_batch": 8, "stopped": "saturated", "gain": 0.05, "steps": 2, "max_batch": 64}
    lat = {str(p["batch"]): {"p50_ms": p["p50_ms"], "throughput": p["throughput"]} for p in points}
    ok = {b: {"passed": True} for b in lat}
    row = _row("a", {"2": {"latency": lat, "sweep": sweep, "verification_by_batch": ok}})
    choice = select.choose([row], ["cpu"], {"cpu": "throughput:64"}, {"cpu": {"cores": 2, "threads": [2]}})["cpu"]
    assert (choice["threads"], choice["batch"]) == (2, 8) and "600 samples/s at batch 8, 2 threads" in choice["reason"]
    capped = select.choose([row], ["cpu"], {"cpu": "throughput:4"})["cpu"]
    assert capped["batch"] == 4  # throughput:<B>: no batch above B
    wrong_at_8 = {**ok, "8": {"passed": False, "reason": "top-1 agreement 0.1 < 0.97"}}
    row["by_threads"]["2"]["verification_by_batch"] = wrong_at_8
    assert select.choose([row], ["cpu"], {"cpu": "throughput:64"})["cpu"]["batch"] == 16  # 8 answered wrongly


def _linear_onnx(x, y, classes):
    from onnx import TensorProto, helper, numpy_helper

    flat = x.reshape(len(x), -1)
    coef = np.linalg.lstsq(np.hstack([flat, np.ones((len(flat), 1))]), np.eye(classes)[y], rcond=None)[0]
    coef = coef.astype(np.float32)
    inits = [numpy_helper.from_array(coef[:-1], "w"), numpy_helper.from_array(coef[-1], "b"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape")]
    nodes = [helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", *x.shape[1:]])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One real benchmark: every variant at 1 thread, the cpu target's finalists also at 2 threads (the
    deployment file's cores), swept over batch 1..16 for throughput:16."""
    import onnx

    from kfopt.data import dataset as ds_mod
    from kfopt.data import preprocess
    from kfopt.export import child_meta
    from kfopt.formats import onnx as onnx_fmt
    from kfopt.models import existing

    root = tmp_path_factory.mktemp("threads_batch")
    preprocess.run("digits", root / "dataset", limit=500, seed=3)
    ds = ds_mod.read(root / "dataset")
    x, y = ds.split("train")
    model = _linear_onnx(x, y, ds.schema.num_classes)
    onnx.save(model, str(root / "model.onnx"))
    existing.run(root / "dataset", root / "variants" / "baseline", model_uri=str(root / "model.onnx"))
    base = variant.read(root / "variants" / "baseline")
    onnx_fmt.write_variant(model, root / "variants" / "onnx_copy", child_meta(base, "onnx_copy", technique="quantize",
                                                                             target="cpu"))
    doc = copy.deepcopy(GKE)
    doc["targets"] = {"cpu": {"cores": 2}}
    (root / "dep.yaml").write_text(yaml.safe_dump(doc))
    objectives = {"cpu": "throughput:16"}
    summary = bench.run([root / "variants"], root / "dataset", root / "bench", baseline_dir=root / "variants" / "baseline",
                        batch_sizes=[1, 16], threads=[1], warmup=2, min_runs=6, max_seconds=0.1, targets=["cpu"],
                        objectives=objectives, deployment=str(root / "dep.yaml"), finalists=1, log=lambda _: None)
    return summary, objectives, root / "bench"


def test_a_finalist_is_timed_at_two_thread_counts_and_swept_to_a_best_batch(swept):
    summary, _, out = swept
    assert summary["serving"] == {"cpu": {"cores": 2, "threads": [1, 2], "source": f"deployment {out.parent / 'dep.yaml'}"}}
    assert summary["settings"]["threads"] == [1]
    rows = {r["name"]: r for r in summary["results"]}
    finalists = [r for r in rows.values() if set(r["by_threads"]) == {"1", "2"}]
    assert len(finalists) == 1  # finalists=1: the other variant is timed at 1 thread only
    (others,) = [r for r in rows.values() if r not in finalists]
    assert set(others["by_threads"]) == {"1"} and "sweep" not in others["by_threads"]["1"]
    row = finalists[0]
    assert row["threads"] == 1 and set(row["latency"]) == {"1", "16"}  # today's keys: the first count, as before
    for count in ("1", "2"):
        sweep = row["by_threads"][count]["sweep"]
        batches = [p["batch"] for p in sweep["points"]]
        assert batches == saturation.doubling(16)[:len(batches)] and sweep["best_batch"] in batches
        assert saturation.best_and_stop([p["throughput"] for p in sweep["points"]], 0.05, 2)[0] == \
            batches.index(sweep["best_batch"])
        verified = row["by_threads"][count]["verification_by_batch"]
        assert set(map(str, batches)) <= set(verified) and all(v["passed"] for v in verified.values())
        assert all(row["by_threads"][count]["latency"][str(b)]["throughput"] > 0 for b in batches)


def test_select_and_report_name_the_threads_and_batch_measured(swept):
    summary, objectives, out = swept
    rows = summary["results"]
    choice = select.choose(rows, ["cpu"], objectives, summary["serving"])["cpu"]
    chosen = next(r for r in rows if r["name"] == choice["chosen"])
    best = min(((-p["throughput"], int(t), p["batch"]) for t, m in chosen["by_threads"].items()
                if (s := m.get("sweep")) for p in s["points"] if p["batch"] == s["best_batch"]))
    assert (choice["threads"], choice["batch"]) == best[1:]
    latency = select.choose(rows, ["cpu"], {"cpu": "latency:1"}, summary["serving"])["cpu"]
    fastest = min((m["latency"]["1"]["p50_ms"], int(t)) for t, m in
                  next(r for r in rows if r["name"] == latency["chosen"])["by_threads"].items())
    assert latency["threads"] == fastest[1] and latency["batch"] == 1
    assert report.merge([out])["serving"] == summary["serving"]  # what the report hands to the choice
    table = {r[0]: r for r in report.table_rows({"rows": rows})}
    assert table[chosen["name"]][-2].startswith("1t ") and " · 2t " in table[chosen["name"]][-2]
    assert table[chosen["name"]][-1].split()[0] in {str(p) for p in saturation.doubling(16)}


def test_the_sweep_reuses_known_batches_and_ends_below_a_batch_that_fails():
    """A constructed throughput curve (samples/s = 100 × batch) through bench.sweep_batches' loop."""
    timed = []

    def timer(bs):
        timed.append(bs)
        if bs == 16:
            raise MemoryError("could not allocate the batch")
        return {"p50_ms": 10.0, "throughput": 100.0 * bs}

    latency = {}
    sweep = bench.sweep_batches(timer, latency, {"1": {"p50_ms": 10.0, "throughput": 100.0}}, 64, 0.05, 2)
    assert timed == [2, 4, 8, 16]  # batch 1 was known: not timed again
    assert [p["batch"] for p in sweep["points"]] == [1, 2, 4, 8] and sweep["best_batch"] == 8
    assert sweep["stopped"] == "batch 16 failed: could not allocate the batch" and set(latency) == {"2", "4", "8"}


@pytest.mark.parametrize("override, match", [("bench.threads=[1, -4]", "bench.threads must be a non-empty list"),
                                             ("bench.threads=-1", "bench.threads must be a non-empty list")])
def test_the_cli_refuses_bad_thread_counts_in_one_line(tmp_path, capsys, override, match):
    from kfopt.cli import main

    assert main(["run", "--runs-dir", str(tmp_path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kfopt: error:") and match in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_cli_refuses_a_deployment_file_with_no_cores(tmp_path, capsys):
    from kfopt.cli import main

    path = _deployment(tmp_path, {"edge": {"cores": 0}})
    assert main(["compile", "--deployment", str(path), "-o", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kfopt: error:") and "'targets.edge.cores' is 0" in err and "Traceback" not in err
    assert not (tmp_path / "p.yaml").exists()
