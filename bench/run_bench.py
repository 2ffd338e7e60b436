"""`make bench`: kfopt's best variant against the usual serving and against Microsoft Olive.

For each reference model (digits_cnn and breast_cancer_mlp in Keras, digits_cnn_torch and
breast_cancer_mlp_torch in torch, and models kfopt did not build: mobilenetv2 and, on request, resnet50,
tf_keras.applications networks the bench trains itself on 32×32 digits and brings with `--model`,
foreign.py) this script, in one run on this machine:
1. runs the real local pipeline (`kfopt run`) twice: with an empty cache (cold) and again (warm),
   timing both; kfopt's `--no-cache` neither reads nor writes kfp.local's cache, so the cold run
   starts from an emptied cache folder instead, which it fills for the warm run;
2. gives Olive (olive-ai, in its own .venv-olive) the same trained model, kfopt's exported
   onnx_fp32, and lets Olive search its CPU passes for its best model (olive_workflow.py);
3. times, each in its own process and interleaved over rounds, the as-trained model called eagerly
   (Keras: `model(x, training=False)`, `model.predict` costs ~45 ms a call and is never used; torch:
   `model(x)` under `torch.inference_mode()`), kfopt's choice for the cpu target, kfopt's fp32 and
   int8 variants of every CPU runtime (LiteRT, ONNX Runtime, OpenVINO, torch eager and
   torch.compile/PT2E) and Olive's models, all through kfopt.bench.time_calls on one thread at batch
   1 and 64 (timing_worker.py);
4. measures this core's matrix-multiply ceiling through ONNX Runtime (machine_limit.py) and reads the
   cpu choice's rate at batch 64 against it, its operations counted from its network's ONNX graph
   (macs.py), and shows the pipeline's slowest stages (the run's report.json `stage_times`);
5. prints medians, spreads, ratios, accuracies and sizes (tables.py), and writes
   bench-out/bench.json and bench-out/bench.md.

kfopt's code is copied to bench-out/src first and everything runs from that copy: kfopt's cache keys
hash its code, so an edit to the working tree during the bench would otherwise make the "warm" run cold.
Variants are discovered from the run (its report and the kfopt.json files), never listed here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import foreign  # noqa: E402
import machine_limit  # noqa: E402
import macs  # noqa: E402
import olive_env  # noqa: E402
import tables  # noqa: E402

BUNDLED = ("digits_cnn", "breast_cancer_mlp", "digits_cnn_torch", "breast_cancer_mlp_torch")
CONFIGS = BUNDLED + tuple(foreign.MODELS)
DEFAULT_CONFIGS = BUNDLED + ("mobilenetv2",)  # resnet50 on request: issue 12 measured its pipeline at 1,004 s here
SNAPSHOT = ("kfopt", "pipelines", "components", "config")
BATCHES = (1, 64)
THREADS = 1  # as kfopt's reference configs benchmark (bench.threads: 1)
# Formats of the CPU runtimes the bench times (fp32 and int8 variants of each).
CPU_FORMATS = ("tflite", "onnx", "openvino", "torch", "torch_compile", "torch_pt2e")
# The as-trained model per source framework: worker kind, row name, what it is, runtime shown.
EAGER = {"keras": ("keras", "keras_eager", "as trained: Keras model(x) eager", "TensorFlow eager"),
         "torch": ("torch", "torch_eager", "as trained: torch model(x) eager", "PyTorch eager")}


BENCHED_LIBRARIES = ("openvino", "nncf", "torch", "torchao", "torch-pruning")  # beyond kfopt's fingerprint


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which and why (the rest still runs)."""


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return lines[-1].strip() if lines else "no output"


def snapshot(out: Path) -> Path:
    src = out / "src"
    shutil.rmtree(src, ignore_errors=True)
    for name in SNAPSHOT:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def child_env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}


def bring_model(src: Path, config: str, cfg_out: Path, epochs: int, log=print) -> tuple[str, dict[str, Any]]:
    """Train the foreign model `config` on 32×32 digits (its own process) and write its run config;
    returns the config's path for `kfopt run --config` and what was trained."""
    where = cfg_out / "brought"
    npz = where / "digits32.npz"
    log(f"  training {foreign.MODELS[config][0]} on 32×32 digits (the model kfopt is then given)")
    start = time.perf_counter()
    with open(cfg_out / "train.log", "w") as handle:
        proc = subprocess.run([sys.executable, str(BENCH / "foreign.py"), config, str(npz), str(where), str(epochs)],
                              cwd=src, env=child_env(src), stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BenchError(f"training {config} failed (exit {proc.returncode}): "
                         f"{last_line((cfg_out / 'train.log').read_text())} (log: {cfg_out / 'train.log'})")
    trained = json.loads((where / "trained.json").read_text())
    trained["command_seconds"] = round(time.perf_counter() - start, 1)
    log(f"    {trained['epochs_run']} epochs in {trained['train_seconds']} s, test accuracy "
        f"{trained['test_accuracy']:.4f}")
    path = foreign.pipeline_config(src / "config" / "digits_cnn.yaml", config, npz, Path(trained["path"]),
                                   where / f"{config}.yaml")
    return str(path), trained


def run_pipeline(src: Path, config: str, runs_dir: Path, overrides: list[str], log: Path) -> dict[str, Any]:
    start = time.perf_counter()
    command = [sys.executable, "-m", "kfopt.cli", "run", "--config", config, "--runs-dir", str(runs_dir)]
    for pair in overrides:
        command += ["--set", pair]
    with open(log, "w") as handle:
        proc = subprocess.run(command, cwd=src, env=child_env(src), stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = log.read_text()
    if proc.returncode != 0:
        raise BenchError(f"kfopt run --config {config} failed (exit {proc.returncode}): {last_line(text)} (log: {log})")
    run_dir = (runs_dir / "latest").resolve()
    return {"command_seconds": round(wall, 1),
            "pipeline_seconds": float((run_dir / "wall_seconds.txt").read_text()),
            "tasks_executed": text.count("Executing task"), "run_dir": str(run_dir)}


def discover(run_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Variant folders by name, and dataset folders ('test': any, 'calibration': the un-augmented one)."""
    from kfopt import variant

    variants: dict[str, Path] = {}
    for vdir in variant.discover(run_dir / "pipeline"):
        meta = variant.read(vdir, verify=False)
        if not meta.skipped:
            variants.setdefault(meta.name, vdir)
    schemas = sorted((run_dir / "pipeline").rglob("schema.json"))
    if not schemas:
        raise BenchError(f"No dataset artifact (schema.json) under {run_dir / 'pipeline'}.")
    plain = [s.parent for s in schemas if "augment" not in json.loads(s.read_text()).get("provenance", {})]
    return variants, {"test": schemas[0].parent, "calibration": (plain or [schemas[0].parent])[0]}


def lineage(name: str, metas: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps from the baseline to variant `name` (read from kfopt.json parents, never from names)."""
    steps = []
    while name is not None and name in metas and len(steps) < 32:
        m = metas[name]
        steps.append({"name": m.name, "format": m.format, "precision": m.precision, "target": m.target,
                      "technique": m.technique})
        name = m.parent
    return steps[::-1]


def olive_models(olive: dict, cfg_out: Path, variants: dict[str, Path], datasets: dict[str, Path],
                 schema: dict, budget_pp: float, log: Path) -> tuple[dict, dict[str, dict]]:
    """Run Olive on kfopt's onnx_fp32; wrap its models as variant folders so one runner times both."""
    from kfopt import export, variant

    source = next((d for d in variants.values() if (m := variant.read(d, verify=False)).format == "onnx"
                   and m.precision == "fp32" and m.technique == "export"), None)
    if source is None:
        raise BenchError("kfopt's run has no exported fp32 ONNX variant to hand to Olive.")
    parent = variant.read(source)
    work = cfg_out / "olive"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    args = {"model_path": str(source / "model.onnx"), "dataset_dir": str(datasets["test"]),
            "calibration_dir": str(datasets["calibration"]), "calibration_samples": 512,
            "input_name": parent.input.name, "num_classes": schema["num_classes"], "accuracy_budget_pp": budget_pp,
            "out_dir": str(work)}
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run([olive["python"], str(BENCH / "olive_workflow.py"), json.dumps(args)], cwd=work,
                              env={**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "PYTHONPATH": ""},
                              stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise BenchError(f"the Olive workflow failed (exit {proc.returncode}): {last_line(log.read_text())} "
                         f"(log: {log})")
    summary = json.loads((work / "summary.json").read_text())
    summary["command_seconds"] = round(time.perf_counter() - start, 1)
    summary["input"] = parent.name
    if summary["best"] is None:
        raise BenchError(f"Olive produced no output model (log: {log}).")
    made: dict[str, dict] = {}
    picks = [("olive_best", summary["best"]["model_path"], summary["best"]["kind"], summary["best"]["passes"])]
    other = "fp32" if summary["best"]["kind"] != "fp32" else "int8"
    if other in summary["fastest"]:
        alt = summary["fastest"][other]
        picks.append((f"olive_{other}", alt["model_path"], other, alt["passes"]))
    for name, model_path, kind, passes in picks:
        vdir = work / "variants" / name
        vdir.mkdir(parents=True)
        shutil.copy(model_path, vdir / "model.onnx")
        meta = export.child_meta(parent, name, technique="olive", precision=kind, target="cpu",
                                 params={"passes": passes})
        variant.write(vdir, meta)
        made[name] = {"dir": vdir, "olive_pick": name == "olive_best"}
    return summary, made


class Worker:
    """A timing_worker.py process for one model."""

    def __init__(self, name: str, spec: dict, src: Path, log: Path):
        self.name, self.log = name, log
        self._stderr = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "timing_worker.py"), json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=child_env(src))

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise BenchError(f"{self.name}: worker exited ({self.proc.returncode}): "
                             f"{last_line(self.log.read_text())} (log: {self.log})")
        return json.loads(line)

    def ready(self) -> dict:
        return self._answer()

    def time(self, batch: int, settings: dict) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": "time", "batch": batch, "settings": settings}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._stderr.close()


def measure(models: list[dict], src: Path, cfg_out: Path, dataset_dir: Path, rounds: int, settings: dict,
            log=print) -> dict[str, float]:
    """Time every model at every batch size, `rounds` times, rotating the order each round.

    Returns the 1-minute load average when the rounds start and end (other processes add noise).
    """
    (cfg_out / "logs").mkdir(parents=True, exist_ok=True)
    (cfg_out / "predictions").mkdir(parents=True, exist_ok=True)
    workers: dict[str, Worker] = {}
    for m in models:
        m["predictions"] = str(cfg_out / "predictions" / f"{m['name']}.npy")
        spec = {"kind": m["kind"], "path": str(m["dir"]), "dataset_dir": str(dataset_dir),
                "batch_sizes": list(BATCHES), "threads": THREADS,
                "predictions": m["predictions"]}
        workers[m["name"]] = Worker(m["name"], spec, src, cfg_out / "logs" / f"{m['name']}.log")
    try:
        live = []
        for m in models:
            try:
                m["load_seconds"] = round(workers[m["name"]].ready()["load_seconds"], 1)
                m["rounds"] = {str(bs): [] for bs in BATCHES}
                live.append(m)
            except BenchError as exc:
                m["error"] = str(exc)
                log(f"    {m['name']}: FAILED to load: {exc}")
        load = {"before": os.getloadavg()[0], "cores": os.cpu_count()}
        for r in range(rounds):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for bs in BATCHES:
                for m in order:
                    if "error" in m:
                        continue
                    try:
                        m["rounds"][str(bs)].append(workers[m["name"]].time(bs, settings))
                    except BenchError as exc:
                        m["error"] = str(exc)
            log(f"    round {r + 1}/{rounds} done")
        load["after"] = os.getloadavg()[0]
        return load
    finally:
        for worker in workers.values():
            worker.close()


def bench_config(config: str, src: Path, out: Path, olive: dict | None, rounds: int, settings: dict,
                 overrides: list[str], brought_epochs: int = 0, log=print) -> dict[str, Any]:
    from kfopt import bench as kbench
    from kfopt import formats, variant, verify
    from kfopt.data import dataset as ds_mod

    cfg_out = out / config
    shutil.rmtree(cfg_out, ignore_errors=True)
    cfg_out.mkdir(parents=True)
    result: dict[str, Any] = {"config": config, "overrides": overrides, "errors": {}}
    # One runs folder (and so one kfp.local cache) per config: digits_cnn and digits_cnn_torch share their
    # data stages, so with one cache the second config's "cold" run would take them from the first's.
    runs_dir = out / "runs" / config
    run_config = config
    if config in foreign.MODELS:
        run_config, result["brought"] = bring_model(src, config, cfg_out, brought_epochs, log)
    log(f"  pipeline, cold cache: kfopt run --config {run_config}" + "".join(f" --set {o}" for o in overrides))
    result["pipeline"] = {"cold": run_pipeline(src, run_config, runs_dir, overrides, cfg_out / "pipeline-cold.log")}
    log(f"    {result['pipeline']['cold']['command_seconds']} s; again with the cache warm")
    result["pipeline"]["warm"] = run_pipeline(src, run_config, runs_dir, overrides, cfg_out / "pipeline-warm.log")
    log(f"    {result['pipeline']['warm']['command_seconds']} s")

    run_dir = Path(result["pipeline"]["cold"]["run_dir"])
    report = json.loads((run_dir / "report.json").read_text())
    result["stages"] = report.get("stage_times", [])  # kfopt.stage_times, from the run's pipeline.log
    variants, datasets = discover(run_dir)
    schema = json.loads((datasets["test"] / "schema.json").read_text())
    budget = report["budget"]
    choice = report["choices"].get("cpu", {})
    result.update(task=schema["task"], num_classes=schema["num_classes"], test_rows=schema["counts"]["test"],
                  budget=budget, kfopt_choice=choice, settings={**settings, "rounds": rounds, "threads": THREADS,
                                                               "batch_sizes": list(BATCHES)})

    base_meta = variant.read(variants["baseline"], verify=False)
    if base_meta.framework not in EAGER:
        raise BenchError(f"the bench has no eager row for a {base_meta.framework!r} baseline "
                         f"(it knows {', '.join(EAGER)}).")
    kind, eager, what, runtime = EAGER[base_meta.framework]
    result["eager"] = eager
    models: list[dict] = [{"name": eager, "kind": kind, "dir": variants["baseline"], "what": what,
                           "runtime": runtime, "precision": base_meta.precision, "meta": base_meta}]
    onnx_rows = [r for r in report["rows"] if r.get("status") == "ok" and r["format"] == "onnx"
                 and r.get("verification", {}).get("passed") and "1" in r.get("latency", {})]
    result["kfopt_best_onnx"] = min(onnx_rows, key=lambda r: r["latency"]["1"]["p50_ms"])["name"] if onnx_rows else None
    wanted = {n for n in (choice.get("chosen"), result["kfopt_best_onnx"]) if n}
    for row in report["rows"]:
        if row.get("status") != "ok" or row.get("hardware") != "cpu":
            continue
        if (row["format"] in CPU_FORMATS and row["name"] != "baseline"
                and (row["precision"] == "fp32" or "int8" in row["precision"])):
            wanted.add(row["name"])
    for name in sorted(wanted, key=lambda n: (n != choice.get("chosen"), n)):
        meta = variant.read(variants[name], verify=False)
        models.append({"name": name, "kind": "torch" if meta.format == "torch" else "variant",
                       "dir": variants[name], "meta": meta,
                       "what": (f"kfopt's choice for cpu ({meta.technique})" if name == choice.get("chosen")
                                else f"kfopt {meta.technique}"),
                       "runtime": formats.get(meta.format).runtime, "precision": meta.precision})

    if olive is None:
        result["errors"]["olive"] = "Olive is not installed (see the Olive environment line above)."
    else:
        log("  Olive workflow on kfopt's onnx_fp32")
        try:
            summary, made = olive_models(olive, cfg_out, variants, datasets, schema, budget["accuracy_budget_pp"],
                                         cfg_out / "olive.log")
            result["olive"] = summary
            log(f"    {summary['command_seconds']} s, {summary['candidates_evaluated']} candidates; "
                f"Olive's pick: {summary['best']['kind']}")
            for name, info in made.items():
                meta = variant.read(info["dir"], verify=False)
                models.append({"name": name, "kind": "variant", "dir": info["dir"], "meta": meta,
                               "what": "Olive's pick" if info["olive_pick"] else f"Olive's fastest {meta.precision}",
                               "runtime": "ONNX Runtime", "precision": meta.precision})
        except (BenchError, OSError, ValueError, KeyError) as exc:
            result["errors"]["olive"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)
            log(f"    FAILED: {result['errors']['olive']}")

    log(f"  timing {len(models)} models × batch {', '.join(map(str, BATCHES))} × {rounds} rounds")
    start = time.perf_counter()
    result["load_average"] = measure(models, src, cfg_out, datasets["test"], rounds, settings, log)
    result["measure_seconds"] = round(time.perf_counter() - start, 1)

    y = ds_mod.read(datasets["test"]).split("test")[1]
    metas = {n: variant.read(d, verify=False) for n, d in variants.items()}
    metas.update({m["name"]: m["meta"] for m in models if m["name"] not in metas and m["name"] != eager})
    eager_probs = np.load(models[0]["predictions"]) if "error" not in models[0] else None
    result["models"] = {}
    for m in models:
        row = {k: m[k] for k in ("what", "runtime", "precision") if k in m}
        steps = lineage("baseline" if m["name"] == eager else m["name"], metas)
        steps[-1]["name"] = m["name"]
        row.update(name=m["name"], dir=str(m["dir"]), format=m["meta"].format, technique=m["meta"].technique,
                   runtime_id=m["meta"].runtime, lineage=steps, error=m.get("error"),
                   load_seconds=m.get("load_seconds"), **kbench.sizes(Path(m["dir"]), m["meta"]))
        if "error" not in m:
            probs = np.load(m["predictions"])
            row.update(verify.quality(probs, y, schema["task"]))
            if eager_probs is not None:
                row["verification"] = verify.compare(probs, eager_probs, y, schema["task"],
                                                     budget["accuracy_budget_pp"], budget["min_agreement"])
            row["latency"] = {bs: tables.summarize(rounds_) for bs, rounds_ in m["rounds"].items() if rounds_}
        result["models"][m["name"]] = row
    result["comparisons"] = tables.comparisons(result)
    result["operations"] = operations(result, variants, metas)
    result["graphs"] = {n: macs.op_counts(Path(result["models"][n]["dir"]) / "model.onnx")
                        for n in (result["kfopt_best_onnx"], "olive_best") if n in result["models"]}
    return result


NETWORK_FORMATS = ("savedmodel", "torch")  # a network as a framework holds it, before any conversion


def operations(result: dict[str, Any], variants: dict[str, Path], metas: dict[str, Any]) -> dict[str, Any]:
    """MACs per sample of the cpu choice, counted from the ONNX export of the network it was made from
    (quantizing or converting a network does not change its arithmetic; the export is what ONNX can count)."""
    chosen = result["kfopt_choice"].get("chosen")
    if chosen not in result["models"]:
        return {"error": "kfopt made no cpu choice the bench timed"}
    steps = result["models"][chosen]["lineage"]
    network = next((s["name"] for s in reversed(steps) if s["format"] in NETWORK_FORMATS), None)
    source = next((n for n, m in sorted(metas.items()) if m.format == "onnx" and m.precision == "fp32"
                   and m.parent == network and m.technique != "olive" and n in variants), None)
    if source is None:
        return {"error": f"no fp32 ONNX export of {chosen}'s network {network} to count its operations from"}
    counted = macs.count(variants[source] / "model.onnx")
    return {"chosen": chosen, "network": network, "counted_from": source,
            "limit_precision": machine_limit.precision_of(result["models"][chosen]["precision"]), **counted}


def measure_limit() -> dict[str, Any]:
    print("\nMachine limit: one fp32 and one int8 fully-connected layer in ONNX Runtime, 1 thread", flush=True)
    start = time.perf_counter()
    limit = machine_limit.measure(threads=THREADS)
    limit["seconds"] = round(time.perf_counter() - start, 1)
    print("  " + ", ".join(f"{k} {v / 1e9:.0f} Gop/s" for k, v in limit["limit_ops_per_s"].items()), flush=True)
    return limit


def overrides_for(config: str, pairs: list[str]) -> list[str]:
    """`--set` values for one config: unprefixed ones, and those prefixed with `config:`."""
    chosen = []
    for pair in pairs:
        key = pair.partition("=")[0]
        scope, colon, rest = pair.partition(":")
        if colon and ":" in key:
            if scope == config:
                chosen.append(rest)
        else:
            chosen.append(pair)
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=CONFIGS,
                   help=f"kfopt configs to bench (default: {', '.join(DEFAULT_CONFIGS)}); mobilenetv2 and "
                        "resnet50 are tf_keras.applications models the bench trains on 32×32 digits and brings "
                        "with --model")
    p.add_argument("--out", default=str(REPO / "bench-out"), help="output folder (default: bench-out/)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default: 5)")
    p.add_argument("--max-seconds", type=float, default=1.0, help="time_calls budget per model, batch and round")
    p.add_argument("--olive-venv", default=str(REPO / ".venv-olive"), help="Olive's virtual environment")
    p.add_argument("--no-olive", action="store_true", help="skip the Olive comparison")
    p.add_argument("--set", action="append", default=[], metavar="[CONFIG:]SECTION.KEY=VALUE",
                   help="passed to `kfopt run` (of CONFIG only, if given), e.g. "
                        "breast_cancer_mlp:distill.enabled=false; shown with the results")
    p.add_argument("--brought-epochs", type=int, default=0,
                   help="at most this many epochs training mobilenetv2/resnet50 (default 0: each model's own, "
                        "with early stopping)")
    p.add_argument("--update-readme", action="store_true", help="write the figures into bench/README.md")
    args = p.parse_args(argv)

    started = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    src = snapshot(out)
    sys.path.insert(0, str(src))
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from kfopt import fingerprint

    results: dict[str, Any] = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               "environment": fingerprint.collect(), "configs": {}}
    results["environment"]["libraries"].update(library_versions(BENCHED_LIBRARIES))
    shutil.rmtree(out / "runs", ignore_errors=True)  # earlier bench runs, and the cache: cold runs start empty

    olive = None
    if args.no_olive:
        results["olive_env"] = {"error": "skipped (--no-olive)"}
    else:
        print(f"Olive environment: {args.olive_venv}", flush=True)
        try:
            olive = olive_env.ensure(Path(args.olive_venv), out / "olive-install.log")
            results["olive_env"] = olive
            print(f"  olive-ai {olive['versions']['olive-ai']}, torch {olive['versions']['torch']} "
                  f"({'created' if olive['created'] else 'reused'}, {olive['seconds']} s)", flush=True)
        except olive_env.OliveEnvError as exc:
            results["olive_env"] = {"error": str(exc)}
            print(f"  FAILED: {exc}", flush=True)

    settings = {"warmup": 20, "min_runs": 30, "max_seconds": args.max_seconds, "target_ci": 0.02}
    limits = [measure_limit()]
    for config in args.configs:
        print(f"\n{config}", flush=True)
        start = time.perf_counter()
        try:
            results["configs"][config] = bench_config(config, src, out, olive, args.rounds, dict(settings),
                                                      overrides_for(config, args.set), args.brought_epochs,
                                                      log=lambda msg: print(msg, flush=True))
        except (BenchError, OSError, KeyError, ValueError) as exc:
            results["configs"][config] = {"config": config, "fatal": f"{type(exc).__name__}: {exc}"}
            print(f"  FAILED: {exc}", flush=True)
        results["configs"][config]["seconds"] = round(time.perf_counter() - start, 1)
    limits.append(measure_limit())
    results["machine_limit"] = {**machine_limit.best(*limits), "seconds": round(sum(m["seconds"] for m in limits), 1)}
    results["total_seconds"] = round(time.perf_counter() - started, 1)

    markdown = tables.render(results)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "bench.md").write_text(markdown)
    print("\n" + markdown)
    if args.update_readme:
        tables.update_readme(BENCH / "README.md", markdown)
    print(f"Written: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0 if not any("fatal" in c for c in results["configs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
