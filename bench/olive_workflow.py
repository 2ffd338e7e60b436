"""Microsoft Olive's best CPU model for kfopt's exported ONNX: run inside .venv-olive by run_bench.py.

Olive gets the same trained model kfopt optimizes (kfopt's onnx_fp32 variant, the exported baseline)
and the same data (calibration: the training split; accuracy: the test split). One workflow, one joint
search: its first stage is either OnnxPeepholeOptimizer (Olive's fp32 graph clean-up) or OnnxQuantization
over Olive's default search space (static and dynamic; QDQ and QOperator; int8/uint8; per-channel;
reduce-range; MinMax/Entropy/Percentile calibration; with and without quantization pre-processing); every
candidate then goes through OrtSessionParamsTuning pinned to one thread. Olive's evaluator ranks the
candidates by p50 latency at batch 1 on one thread (kfopt's cpu objective, latency:1) under an accuracy
goal of at most kfopt's own budget of degradation, and saves its best.

The peephole pass is an alternative in the searched stage rather than a pass in front of it: in olive-ai
0.13.0 a search step that takes an earlier pass from its cache fails ('"FootprintNode" object has no
field "model_config"'), which a pass shared by every search point would trigger.

Usage: python olive_workflow.py '<json args>'; writes <out_dir>/summary.json.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

USER_SCRIPT = str(Path(__file__).resolve().parent / "olive_data.py")


def _data(name: str, dataset_dir: str, split: str, input_name: str, batch: int, max_samples: int = 0) -> dict:
    return {"name": name, "type": "DataContainer", "user_script": USER_SCRIPT,
            "load_dataset_config": {"type": "kfopt_split", "dataset_dir": dataset_dir, "split": split,
                                    "input_name": input_name, "max_samples": max_samples},
            "post_process_data_config": {"type": "kfopt_labels"},
            "dataloader_config": {"batch_size": batch}}


def _one_thread() -> dict:
    return {"onnx": {"session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}}


def search_config(model_path: str, args: dict, out: Path) -> dict:
    classes = max(int(args["num_classes"]), 2)
    return {
        "input_model": {"type": "ONNXModel", "model_path": model_path},
        "systems": {"local": {"type": "LocalSystem",
                              "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [
            _data("calibration", args["calibration_dir"], "train", args["input_name"], 64, args["calibration_samples"]),
            _data("test", args["dataset_dir"], "test", args["input_name"], 64),
            _data("latency", args["dataset_dir"], "test", args["input_name"], 1, 64),
        ],
        "evaluators": {"cpu": {
            # an explicit type: without one, olive-ai 0.13.0 fails in find_all_resources (type None)
            "type": "OnnxEvaluator",
            "metrics": [
                {"name": "accuracy", "type": "accuracy", "data_config": "test",
                 "sub_types": [{"name": "accuracy_score", "priority": 2,
                                "metric_config": {"task": "multiclass", "num_classes": classes},
                                "goal": {"type": "max-degradation", "value": args["accuracy_budget_pp"] / 100}}]},
                {"name": "latency", "type": "latency", "data_config": "latency", "inference_settings": _one_thread(),
                 "sub_types": [{"name": "p50", "priority": 1,
                                "metric_config": {"warmup_num": 20, "repeat_test_num": 200}}]},
            ]}},
        "passes": {
            "optimize": [{"type": "OnnxQuantization", "data_config": "calibration"},
                         {"type": "OnnxPeepholeOptimizer"}],
            "session_params": {"type": "OrtSessionParamsTuning", "data_config": "latency",
                               "intra_thread_num_list": [1], "inter_thread_num_list": [1]},
        },
        "search_strategy": {"execution_order": "joint", "sampler": "sequential"},
        "evaluator": "cpu", "host": "local", "target": "local",
        "evaluate_input_model": True,
        "cache_dir": str(out / "cache"), "output_dir": str(out / "best"),
        "log_severity_level": 3,
    }


def _metrics(metrics: dict | None) -> dict:
    return {k: v["value"] if isinstance(v, dict) else v for k, v in (metrics or {}).items()}


def _lineage(nodes: dict, model_id: str) -> list[dict]:
    """The passes that made a model, first to last, with the parameters they ran with."""
    chain = []
    while model_id in nodes and nodes[model_id].get("from_pass"):
        node = nodes[model_id]
        params = {k: v for k, v in (node.get("pass_run_config") or {}).items()
                  if v is not None and not isinstance(v, dict) and k not in ("user_script", "script_dir")}
        chain.append({"pass": node["from_pass"], **params})
        model_id = node["parent_model_id"]
    return chain[::-1]


def _kind(nodes: dict, model_id: str) -> str:
    return "int8" if any(p["pass"] == "onnxquantization" for p in _lineage(nodes, model_id)) else "fp32"


def _fastest_by_kind(nodes: dict, evaluated: list[dict]) -> dict:
    """Olive's fastest fp32 and fastest quantized candidate that met the accuracy goal, by its own latency."""
    fastest: dict = {}
    for node in evaluated:
        if not node["metrics"].get("if_goals_met"):
            continue
        latency = node["metrics"]["value"]["latency-p50"]["value"]
        kind = _kind(nodes, node["model_id"])
        if kind not in fastest or latency < fastest[kind]["latency_p50_ms"]:
            fastest[kind] = {"model_id": node["model_id"], "latency_p50_ms": latency,
                             "model_path": node["model_config_data"]["config"]["model_path"],
                             "accuracy": node["metrics"]["value"]["accuracy-accuracy_score"]["value"],
                             "passes": _lineage(nodes, node["model_id"])}
    return fastest


def main(args: dict) -> dict:
    import olive
    from olive.workflows import run as olive_run

    out = Path(args["out_dir"])
    workflow = search_config(args["model_path"], args, out)
    (out / "search_config.json").write_text(json.dumps(workflow, indent=2))
    start = time.perf_counter()
    result = olive_run(copy.deepcopy(workflow))  # Olive rewrites the dict it is given
    search_seconds = time.perf_counter() - start

    nodes = json.loads((out / "best" / "footprint.json").read_text())
    evaluated = [n for n in nodes.values() if n.get("metrics") and n.get("parent_model_id")]
    summary = {
        "olive_version": olive.__version__,
        "input_metrics": _metrics(result.get_input_model_metrics()),
        "candidates_evaluated": len(evaluated),
        "candidates_meeting_goal": sum(1 for n in evaluated if n["metrics"].get("if_goals_met")),
        "seconds": round(search_seconds, 1),
        "workflow": {"passes": {k: [c["type"] for c in v] if isinstance(v, list) else v["type"]
                                for k, v in workflow["passes"].items()},
                     "search": workflow["search_strategy"], "objective": "latency p50 at batch 1, one thread",
                     "accuracy_goal": f"max-degradation {args['accuracy_budget_pp']} pp"},
        "best": None,
        "fastest": _fastest_by_kind(nodes, evaluated),
    }
    best = result.get_best_candidate()
    if best is not None:
        summary["best"] = {"model_path": str(Path(best.model_path)), "model_id": best.model_id,
                           "kind": _kind(nodes, best.model_id), "metrics": _metrics(best.metrics_value),
                           "passes": _lineage(nodes, best.model_id),
                           "inference_settings": best.get_inference_config()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
