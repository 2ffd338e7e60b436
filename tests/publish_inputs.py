"""Inputs for the publish tests, from one real small run, plus helpers to simulate later runs.

`run_outputs` trains nothing itself: it takes conftest's `digits_small` (dataset + baseline), exports
TFLite/ONNX, benchmarks them with tiny settings and builds the report, once per session (both
publish test modules import it; the module-level cache keeps it to one build). Later runs are
simulated by editing a copy of report.json and, since a rerun with byte-identical variants is
"already promoted" (no new version), by `retrained_roots`: copies of the real variant folders, each
with one extra file, so their files' sha256 differ as a retrained model's would.
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from kfopt import publish, registry, storage, variant
from kfopt.registry import Registry

NAME = "digits"
_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


@pytest.fixture(scope="session")
def run_outputs(digits_small, tmp_path_factory) -> dict[str, Any]:
    with _LOCK:
        if "run" not in _CACHE:
            _CACHE["run"] = _build(digits_small, tmp_path_factory.mktemp("publish_run"))
    return _CACHE["run"]


def _build(digits_small: dict[str, Path], root: Path) -> dict[str, Any]:
    from kfopt import bench, export, report

    export.run(digits_small["baseline"], root / "exports")
    bench.run([digits_small["baseline"], root / "exports"], digits_small["dataset"], root / "bench",
              baseline_dir=digits_small["baseline"], batch_sizes=[1], warmup=2, min_runs=5, max_seconds=0.2,
              log=lambda _: None)
    report.run([root / "bench"], root / "report", name="kfopt", targets=["cpu", "edge", "gpu", "tpu"],
               dataset_dir=digits_small["dataset"])
    return {"report_dir": root / "report", "report": json.loads((root / "report" / "report.json").read_text()),
            "roots": [digits_small["baseline"], root / "exports"], "dataset": digits_small["dataset"], "root": root}


def edited_report(run: dict[str, Any], out: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A report folder holding a copy of the run's report.json after `edit(report)`."""
    data = copy.deepcopy(run["report"])
    if edit:
        edit(data)
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps(data))
    return out


def retrained_roots(run: dict[str, Any], out: Path, tag: str, only: set[str] | None = None) -> list[Path]:
    """Copies of the run's variant roots whose variants (all, or those named in `only`) differ in their files."""
    roots = []
    for i, root in enumerate(run["roots"]):
        copy_root = Path(out) / f"root{i}"
        shutil.copytree(root, copy_root)
        for folder in variant.discover(copy_root):
            meta = variant.read(folder)
            if only is None or meta.name in only:
                (folder / "retrained.txt").write_text(f"{tag}\n")
                variant.write(folder, meta)
        roots.append(copy_root)
    return roots


def chosen_rows(report: dict[str, Any], target: str = "cpu") -> list[dict[str, Any]]:
    """Every row of the variant chosen for `target` (edits must hit the row the gate reads)."""
    return [r for r in report["rows"] if r["name"] == report["choices"][target]["chosen"]]


def concurrent_publish(run_outputs, tmp_path, reg: str, n: int) -> dict[str, dict]:
    """Publish n distinguishable runs at once (threads released together); run_id → result."""
    reports = [edited_report(run_outputs, tmp_path / f"rep{i}", lambda rep, i=i: rep.update(created=f"run-{i}"))
               for i in range(n)]
    roots = [retrained_roots(run_outputs, tmp_path / f"roots{i}", f"run-{i}") for i in range(n)]
    barrier, results, errors = threading.Barrier(n), {}, []

    def one(i):
        barrier.wait()
        try:
            res = publish.run(reports[i], roots[i], reg, NAME, tmp_path / f"out{i}", run_id=f"run-{i}")
            results[res["run_id"]] = res
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    return results


def check_no_interleaving(reg: str, results: dict[str, dict], n: int) -> None:
    """Every version belongs to exactly one run, whole; the promotion chain has no gap and no fork."""
    r = Registry(reg)
    assert sorted(res["version"] for res in results.values()) == list(range(1, n + 1)) == r.versions(NAME)
    for run_id, res in results.items():
        v = res["version"]
        assert registry.owner(r.version_dir(NAME, v))["run_id"] == run_id
        assert storage.read_json(f"{r.version_dir(NAME, v)}/publish.json")["run_id"] == run_id
        assert storage.read_json(f"{r.version_dir(NAME, v)}/report.json")["created"] == run_id
        card = r.version_card("cpu", NAME, v)
        assert card["run_id"] == run_id and card["version"] == v
    chain = [registry.owner(f"{r.root}/deployment_models/cpu/{NAME}/promotions/{k:06d}") for k in range(1, n + 1)]
    assert [c["previous"] for c in chain] == [None, *range(1, n)]
    assert sorted(c["version"] for c in chain) == list(range(1, n + 1))
    assert r.promoted("cpu", NAME).number == n


# Triton's ModelConfig (model_config.proto), the fields kfopt writes, with Triton's field numbers and
# enum values, so tests parse config.pbtxt as the protobuf text format Triton reads.
_TRITON_PROTO = """
name: "triton_model_config_subset.proto" package: "inference" syntax: "proto3"
enum_type { name: "DataType" value { name: "TYPE_INVALID" number: 0 } value { name: "TYPE_BOOL" number: 1 }
  value { name: "TYPE_UINT8" number: 2 } value { name: "TYPE_INT8" number: 6 } value { name: "TYPE_INT32" number: 8 }
  value { name: "TYPE_INT64" number: 9 } value { name: "TYPE_FP16" number: 10 } value { name: "TYPE_FP32" number: 11 }
  value { name: "TYPE_FP64" number: 12 } value { name: "TYPE_BF16" number: 14 } }
message_type { name: "ModelInput"
  field { name: "name" number: 1 type: TYPE_STRING label: LABEL_OPTIONAL }
  field { name: "data_type" number: 2 type: TYPE_ENUM type_name: ".inference.DataType" label: LABEL_OPTIONAL }
  field { name: "dims" number: 4 type: TYPE_INT64 label: LABEL_REPEATED } }
message_type { name: "ModelOutput"
  field { name: "name" number: 1 type: TYPE_STRING label: LABEL_OPTIONAL }
  field { name: "data_type" number: 2 type: TYPE_ENUM type_name: ".inference.DataType" label: LABEL_OPTIONAL }
  field { name: "dims" number: 3 type: TYPE_INT64 label: LABEL_REPEATED }
  field { name: "label_filename" number: 4 type: TYPE_STRING label: LABEL_OPTIONAL } }
message_type { name: "ModelInstanceGroup"
  field { name: "count" number: 2 type: TYPE_INT32 label: LABEL_OPTIONAL }
  field { name: "kind" number: 4 type: TYPE_ENUM type_name: ".inference.ModelInstanceGroup.Kind" label: LABEL_OPTIONAL }
  enum_type { name: "Kind" value { name: "KIND_AUTO" number: 0 } value { name: "KIND_GPU" number: 1 }
    value { name: "KIND_CPU" number: 2 } } }
message_type { name: "ModelDynamicBatching"
  field { name: "preferred_batch_size" number: 1 type: TYPE_INT32 label: LABEL_REPEATED } }
message_type { name: "ModelConfig"
  field { name: "name" number: 1 type: TYPE_STRING label: LABEL_OPTIONAL }
  field { name: "platform" number: 2 type: TYPE_STRING label: LABEL_OPTIONAL }
  field { name: "max_batch_size" number: 4 type: TYPE_INT32 label: LABEL_OPTIONAL }
  field { name: "input" number: 5 type: TYPE_MESSAGE type_name: ".inference.ModelInput" label: LABEL_REPEATED }
  field { name: "output" number: 6 type: TYPE_MESSAGE type_name: ".inference.ModelOutput" label: LABEL_REPEATED }
  field { name: "instance_group" number: 7 type: TYPE_MESSAGE type_name: ".inference.ModelInstanceGroup"
          label: LABEL_REPEATED }
  field { name: "dynamic_batching" number: 11 type: TYPE_MESSAGE type_name: ".inference.ModelDynamicBatching"
          label: LABEL_OPTIONAL } }
"""


def parse_triton_config(text: str):
    """Parse config.pbtxt into a ModelConfig message (raises text_format.ParseError if Triton could not)."""
    if "ModelConfig" not in _CACHE:
        pool = descriptor_pool.DescriptorPool()
        pool.Add(text_format.Parse(_TRITON_PROTO, descriptor_pb2.FileDescriptorProto()))
        _CACHE["ModelConfig"] = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))
    return text_format.Parse(text, _CACHE["ModelConfig"]())
