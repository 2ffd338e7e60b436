"""Figures of the bench: per-model summaries, the side-by-side comparisons, and the Markdown report.

Every ratio is A / B of the same statistic measured in the same round (the models of a round are
timed back to back), then the median over rounds with the rounds' range next to it: below 1 means A
is faster (or smaller). A reading says "no clear difference" unless at least 80% of the rounds agree
on which side is faster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

README_BEGIN = "<!-- bench:begin (written by `python bench/run_bench.py --update-readme`) -->"
README_END = "<!-- bench:end -->"
AGREEMENT = 0.8  # share of rounds that must agree on which side is faster for a clear reading


def summarize(rounds: list[dict]) -> dict[str, Any]:
    """One model at one batch size over all rounds."""
    out: dict[str, Any] = {f"p{q}_ms": float(np.median([r[f"p{q}_ms"] for r in rounds])) for q in (10, 25, 50, 75, 90)}
    out.update(samples=int(sum(r["samples"] for r in rounds)), rounds_p50_ms=[r["p50_ms"] for r in rounds],
               ci95_rel_max=float(max(r["ci95_rel"] for r in rounds)))
    return out


def _ratio(a: list[float], b: list[float]) -> dict[str, Any]:
    per_round = [x / y for x, y in zip(a, b)]
    return {"ratio": float(np.median(per_round)), "min": float(min(per_round)), "max": float(max(per_round)),
            "per_round": per_round}


EAGER_TITLES = {"keras_eager": "Keras eager", "torch_eager": "torch eager"}
SHRINKING = {"prune", "distill"}  # techniques that change the network itself


def _techniques(model: dict) -> set[str]:
    return {t for step in model["lineage"] for t in step["technique"].split("+")}


def _shape(steps: list[dict]) -> list[tuple]:
    """What a chain of steps makes, name-free: the first step's (format, precision, target), then each
    later step's with the technique it applied."""
    first = [(steps[0]["format"], steps[0]["precision"], steps[0]["target"])] if steps else []
    return first + [(s["format"], s["precision"], s["target"], s["technique"].split("+")[-1]) for s in steps[1:]]


def unpruned_counterpart(models: dict[str, dict], name: str) -> str | None:
    """The model made from the unpruned baseline by the same steps that made `name` from its pruned
    network (pruned_50_onnx_int8 → onnx_int8, pruned_50 → the eager baseline), or None."""
    steps = models[name]["lineage"]
    at = next((i for i, s in enumerate(steps) if "prune" in s["technique"].split("+")), None)
    if at is None:
        return None
    want = _shape(steps[at:])
    return next((n for n, m in sorted(models.items()) if not _techniques(m) & (SHRINKING | {"olive"})
                 and _shape(m["lineage"]) == want), None)


def _fp32_reference(models: dict[str, dict], runtime_id: str) -> str | None:
    """The runtime's fp32 model of the unchanged network, made in the fewest steps (onnx_fp32, not Olive's)."""
    refs = [(len(m["lineage"]), n) for n, m in models.items() if m.get("runtime_id") == runtime_id
            and m["precision"] == "fp32" and m["technique"] != "olive" and not _techniques(m) & SHRINKING]
    return min(refs)[1] if refs else None


def _onnx_counterpart(models: dict[str, dict], name: str) -> str | None:
    """The ONNX Runtime model of the same ONNX file an OpenVINO model was converted from, same precision:
    the parent itself for fp32, the parent's ORT int8 child for the CPU for int8."""
    steps = models[name]["lineage"]
    if len(steps) < 2:
        return None
    parent = steps[-2]["name"]
    if models[name]["precision"] == "fp32":
        return parent if parent in models else None
    return next((n for n, m in sorted(models.items()) if m["format"] == "onnx" and m["technique"] != "olive"
                 and len(m["lineage"]) >= 2
                 and m["lineage"][-2]["name"] == parent and m["precision"] == models[name]["precision"]
                 and m["lineage"][-1]["target"] == "cpu"), None)


def pairs_of(result: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(title, A, B, with sizes) of every comparison, found from the models' lineage and runtimes."""
    models = result["models"]
    eager = result.get("eager", "keras_eager")
    best = result.get("kfopt_choice", {}).get("chosen")
    pairs: list[tuple[str, str, str, bool]] = []
    if best:
        pairs.append((f"kfopt best vs {EAGER_TITLES.get(eager, eager)}", best, eager, True))
        pairs.append(("kfopt best vs Olive best", best, "olive_best", True))
    best_onnx = result.get("kfopt_best_onnx")
    if best_onnx:
        pairs.append(("kfopt's best ONNX vs Olive best (both ONNX Runtime)", best_onnx, "olive_best", True))
    for runtime_id in sorted({m.get("runtime_id") for m in models.values() if m.get("runtime_id")}):
        ref = _fp32_reference(models, runtime_id)
        if ref is None:
            continue
        for name, m in models.items():
            if m.get("runtime_id") == runtime_id and "int8" in m["precision"]:
                pairs.append((f"int8 vs fp32 in {models[ref]['runtime']}", name, ref, True))
    for name, m in models.items():
        if m["format"] == "openvino" and (other := _onnx_counterpart(models, name)):
            pairs.append(("OpenVINO vs ONNX Runtime (same ONNX, same precision)", name, other, False))
    for name in models:
        if other := unpruned_counterpart(models, name):
            pairs.append((f"pruned vs unpruned in {models[name]['runtime']}", name, other, True))
    for bs in ("1", "64"):
        shrunk, plain = fastest_within_budget(models, bs, shrunk=True), fastest_within_budget(models, bs, shrunk=False)
        if shrunk and plain:
            pairs.append((f"{SHRUNK_VS_INT8} @{bs}", shrunk, plain, True))
    return pairs


SHRUNK_VS_INT8 = "fastest pruned/distilled vs fastest int8 of the unchanged network, both within budget, picked"


def fastest_within_budget(models: dict[str, dict], bs: str, *, shrunk: bool) -> str | None:
    """The fastest model at batch `bs` within kfopt's budget (the bench's own check against the as-trained
    model's answers): of the pruned or distilled ones (`shrunk`), or of the unchanged network's int8 ones
    (Olive's excluded: they are compared on their own)."""
    found = [(m["latency"][bs]["p50_ms"], n) for n, m in models.items()
             if bs in m.get("latency", {}) and m.get("verification", {}).get("passed")
             and (bool(_techniques(m) & SHRINKING) if shrunk
                  else "int8" in m["precision"] and not _techniques(m) & (SHRINKING | {"olive"}))]
    return min(found)[1] if found else None


def comparisons(result: dict[str, Any]) -> list[dict[str, Any]]:
    models = result["models"]
    timed = {n for n, m in models.items() if m.get("latency")}
    rows = []
    for title, a, b, with_sizes in pairs_of(result):
        absent = [n for n in (a, b) if n not in models]
        if absent:
            rows.append({"title": title, "a": a, "b": b, "missing": f"{' and '.join(absent)} not available"})
            continue
        untimed = [n for n in (a, b) if n not in timed]
        if untimed:
            rows.append({"title": title, "a": a, "b": b, "missing": f"{' and '.join(untimed)} failed to run"})
        else:
            for bs in sorted(set(models[a]["latency"]) & set(models[b]["latency"]), key=int):
                la, lb = models[a]["latency"][bs], models[b]["latency"][bs]
                rows.append({"title": title, "a": a, "b": b, "measure": f"p50 @{bs}", "kind": "latency",
                             "a_value": la["p50_ms"], "b_value": lb["p50_ms"],
                             **_ratio(la["rounds_p50_ms"], lb["rounds_p50_ms"])})
        for key, label in (("size_bytes", "size"), ("size_gzip_bytes", "gzip size")) if with_sizes else ():
            va, vb = models[a][key], models[b][key]
            rows.append({"title": title, "a": a, "b": b, "measure": label, "kind": "size", "a_value": va,
                         "b_value": vb, "ratio": va / vb, "min": va / vb, "max": va / vb})
    return rows


def fmt_ms(ms: float) -> str:
    if ms < 0.1:
        return f"{ms * 1000:.1f} µs"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    return f"{ms:.2f} ms"


def _value(row: dict, key: str) -> str:
    return fmt_ms(row[key]) if row["kind"] == "latency" else f"{row[key] / 1024:.1f} KiB"


def _reading(row: dict) -> str:
    """The ratio in words; for timings also how many rounds agree with the median's direction."""
    faster, slower = ("faster", "slower") if row["kind"] == "latency" else ("smaller", "larger")
    r = row["ratio"]
    if row["kind"] == "latency":
        rounds = row["per_round"]
        agree = sum(1 for x in rounds if (x < 1) == (r < 1))
        if agree < AGREEMENT * len(rounds):
            return f"no clear difference ({agree} of {len(rounds)} rounds say {faster if r < 1 else slower})"
    if abs(r - 1) < 0.01:
        return "the same within 1%"
    factor = 1 / r if r < 1 else r
    text = f"A {f'{factor:,.0f}' if factor >= 100 else f'{factor:.3g}'}× {faster if r < 1 else slower}"
    if row["kind"] != "latency" or agree == len(rounds):
        return text
    return f"{text} ({agree} of {len(rounds)} rounds)"


def _spread(lat: dict) -> str:
    return f"{fmt_ms(lat['p10_ms'])}–{fmt_ms(lat['p90_ms'])}"


def _passes(passes: list[dict]) -> str:
    """Olive's pass lineage in a few words."""
    words = []
    for p in passes:
        if p["pass"] == "onnxquantization" and p.get("quant_mode") == "dynamic":
            words.append(f"OnnxQuantization dynamic, weights {p.get('precision')}, "
                         f"per_channel={p.get('per_channel')}, reduce_range={p.get('reduce_range')}, "
                         f"preprocess={p.get('quant_preprocess')}")
        elif p["pass"] == "onnxquantization":
            words.append(f"OnnxQuantization static {p.get('quant_format')}, weights {p.get('precision')}, "
                         f"activations {p.get('activation_type')}, per_channel={p.get('per_channel')}, "
                         f"reduce_range={p.get('reduce_range')}, calibration {p.get('calibrate_method')}, "
                         f"preprocess={p.get('quant_preprocess')}")
        elif p["pass"] == "ortsessionparamstuning":
            words.append("OrtSessionParamsTuning (1 thread)")
        elif p["pass"] == "onnxpeepholeoptimizer":
            words.append("OnnxPeepholeOptimizer")
        else:
            words.append(p["pass"])
    return " → ".join(words)


def _model_table(result: dict) -> list[str]:
    lines = ["| model | what | runtime | precision | accuracy | Δ pp vs as trained | agreement | kfopt's budget | "
             "p50 @1 | p10–p90 @1 | p50 @64 | p10–p90 @64 | calls @1 / @64 | size KiB | gzip KiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        size = f"{m['size_bytes'] / 1024:.1f} | {m['size_gzip_bytes'] / 1024:.1f}"
        if m.get("error"):
            lines.append(f"| {name} | {m.get('what', '')} | {m.get('runtime', '')} | {m.get('precision', '')} | "
                         f"FAILED: {m['error']} | | | | | | | | | {size} |")
            continue
        v = m.get("verification", {})
        lat = m["latency"]
        l1, l64 = lat.get("1"), lat.get("64")
        lines.append(
            f"| {name} | {m['what']} | {m['runtime']} | {m['precision']} | {m['accuracy']:.4f} | "
            f"{v.get('accuracy_delta_pp', float('nan')):+.2f} | {v.get('agreement', float('nan')):.3f} | "
            f"{'within' if v.get('passed') else 'outside'} | "
            f"{fmt_ms(l1['p50_ms']) if l1 else '–'} | {_spread(l1) if l1 else '–'} | "
            f"{fmt_ms(l64['p50_ms']) if l64 else '–'} | {_spread(l64) if l64 else '–'} | "
            f"{l1['samples'] if l1 else 0} / {l64['samples'] if l64 else 0} | {size} |")
    return lines


def _comparison_table(result: dict) -> list[str]:
    lines = ["| comparison | A | B | measure | A | B | A / B: median of rounds [range] | reading |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["comparisons"]:
        if "missing" in row:
            lines.append(f"| {row['title']} | {row['a']} | {row['b']} | | | | not compared: {row['missing']} | |")
            continue
        rng = f" [{row['min']:.3g}–{row['max']:.3g}]" if row["kind"] == "latency" else ""
        lines.append(f"| {row['title']} | {row['a']} | {row['b']} | {row['measure']} | {_value(row, 'a_value')} | "
                     f"{_value(row, 'b_value')} | {row['ratio']:.3g}{rng} | {_reading(row)} |")
    return lines


def _config_section(result: dict) -> list[str]:
    name = result["config"]
    if "fatal" in result:
        return [f"## {name}", "", f"**FAILED**: {result['fatal']}", ""]
    budget = result["budget"]
    choice = result["kfopt_choice"]
    out = [f"## {name}", "",
           f"{result['task']}, {result['num_classes']} classes, {result['test_rows']} test rows; kfopt's accuracy "
           f"budget {budget['accuracy_budget_pp']} pp, top-1 agreement ≥ {budget['min_agreement']}."
           + (f" Pipeline run with overrides: {', '.join(f'`--set {o}`' for o in result['overrides'])}."
              if result.get("overrides") else ""),
           "",
           f"- kfopt's choice for the cpu target ({choice.get('objective')}): **{choice.get('chosen')}** — "
           f"{choice.get('reason')}"]
    if result.get("brought"):
        b = result["brought"]
        out.append(f"- The model, which kfopt did not build: {b['model']}, {b['parameters']:,} parameters, trained by the "
                   f"bench on the pipeline's own training split ({b['train_rows']} rows; Adam {b['learning_rate']:g}, "
                   f"{b['epochs_run']} of at most {b['epochs_max']} epochs, early stopping on the validation loss, "
                   f"BatchNormalization momentum "
                   f"{b['bn_momentum']}), test accuracy {b['test_accuracy']:.4f}; given to the pipeline with "
                   "`kfopt run --model` (data as given, no normalization)")
    if result.get("kfopt_best_onnx"):
        out.append(f"- kfopt's fastest verified ONNX Runtime variant (same rule, latency:1, in the pipeline's "
                   f"benchmark): **{result['kfopt_best_onnx']}**, for the same-runtime comparison with Olive")
    olive = result.get("olive")
    if olive:
        best = olive["best"]
        out.append(f"- Olive {olive['olive_version']} on kfopt's {olive['input']}: {olive['candidates_evaluated']} "
                   f"candidates evaluated in {olive['seconds']} s, {olive['candidates_meeting_goal']} met the accuracy "
                   f"goal ({olive['workflow']['accuracy_goal']}); Olive's pick (olive_best, {best['kind']}): "
                   f"{_passes(best['passes'])}. Olive's own figures for it: p50 @1 "
                   f"{fmt_ms(best['metrics']['latency-p50'])}, "
                   f"accuracy {best['metrics']['accuracy-accuracy_score']:.4f} "
                   f"(its input: {fmt_ms(olive['input_metrics']['latency-p50'])}, "
                   f"{olive['input_metrics']['accuracy-accuracy_score']:.4f}).")
    graphs = result.get("graphs", {})
    if len(graphs) == 2:
        (a, ca), (b, cb) = graphs.items()
        differ = [f"{op} {ca.get(op, 0)} vs {cb.get(op, 0)}" for op in sorted(set(ca) | set(cb))
                  if ca.get(op, 0) != cb.get(op, 0)]
        out.append(f"- The two ONNX graphs as stored: {a} {sum(ca.values())} nodes, {b} {sum(cb.values())}"
                   + (f"; they differ in {', '.join(differ)}" if differ else "; the same op types and counts"))
    load = result.get("load_average")
    if load:
        out.append(f"- Load average (1 min) on this machine's {load['cores']} cores while timing: "
                   f"{load['before']:.1f} at the start, {load['after']:.1f} at the end"
                   + (" — other processes were running; expect noisier figures than on an idle machine."
                      if max(load["before"], load["after"]) > 0.5 * load["cores"] else "."))
    if result["errors"].get("olive"):
        out.append(f"- Olive: **not compared** — {result['errors']['olive']}")
    out += ["", *_model_table(result), "", *_comparison_table(result), ""]
    return out


def _reading_of(result: dict, title_start: str, measure: str, a: str | None = None) -> str:
    row = next((r for r in result.get("comparisons", []) if r["title"].startswith(title_start)
                and r.get("measure") == measure and (a is None or r["a"] == a)), None)
    if row is None:
        return "–"
    return f"{_reading(row)} ({_value(row, 'a_value')} vs {_value(row, 'b_value')})"


def _best_pruning(result: dict) -> str:
    """The pruned model within kfopt's budget that gains most at batch 64 over its unpruned counterpart."""
    rows = [r for r in result.get("comparisons", []) if r["title"].startswith("pruned vs unpruned")
            and r.get("measure") == "p50 @64" and result["models"][r["a"]].get("verification", {}).get("passed")]
    if not rows:
        return "no pruned model within the budget" if any(
            r["title"].startswith("pruned vs unpruned") for r in result.get("comparisons", [])) else "–"
    row = min(rows, key=lambda r: ("no clear" in _reading(r), r["ratio"]))  # a clear reading first
    return f"{row['a']} vs {row['b']} ({row['title'][len('pruned vs unpruned in '):]}): {_reading(row)}"


def _summary(results: dict) -> list[str]:
    lines = ["| config | kfopt's cpu choice | vs as trained @1 | vs as trained @64 | vs Olive best @1 | "
             "vs Olive best @64 | best pruning within budget, @64, same runtime |", "|---|---|---|---|---|---|---|"]
    for name, r in results["configs"].items():
        if "fatal" in r:
            lines.append(f"| {name} | FAILED: {r['fatal']} | | | | | |")
            continue
        eager = EAGER_TITLES.get(r.get("eager", ""), r.get("eager", ""))
        lines.append(f"| {name} | {r['kfopt_choice'].get('chosen')} | "
                     f"{eager}: {_reading_of(r, 'kfopt best vs ' + eager, 'p50 @1')} | "
                     f"{_reading_of(r, 'kfopt best vs ' + eager, 'p50 @64')} | "
                     f"{_reading_of(r, 'kfopt best vs Olive', 'p50 @1')} | "
                     f"{_reading_of(r, 'kfopt best vs Olive', 'p50 @64')} | {_best_pruning(r)} |")
    return lines


# Issue 12's goals: (× faster than Olive's pick @1, @64) for the models kfopt did not build, and "no regression
# from today's" on the bundled digits CNN (2.6× / 1.8× in the bench before it); × faster than Keras eager @1.
OLIVE_GOALS = {"foreign": (3.0, 2.0), "digits_cnn": (2.6, 1.8)}
EAGER_GOAL = 50.0


def _row(result: dict, title_start: str, measure: str) -> dict | None:
    return next((r for r in result.get("comparisons", []) if r["title"].startswith(title_start)
                 and r.get("measure") == measure and "ratio" in r), None)


def _factor_reached(row: dict | None, factor: float) -> str:
    """'yes' when the rounds clearly say A is faster by at least `factor` (1: at least as fast, where a
    "no clear difference" reading counts as equal)."""
    if row is None:
        return "not measured"
    reading = _reading(row)
    if factor == 1.0:
        return "no" if reading.startswith("A ") and "slower" in reading else "yes"
    return "yes" if "faster" in reading and reading.startswith("A ") and 1 / row["ratio"] >= factor else "no"


def _shrunk_figure(result: dict, bs: str) -> tuple[str, str]:
    """Whether a pruned/distilled model within budget beats the fastest int8 of the unchanged network at `bs`;
    when none is within the budget, the closest one and how much accuracy it lost."""
    row = _row(result, f"{SHRUNK_VS_INT8} @{bs}", f"p50 @{bs}")
    if row:
        return f"{row['a']} vs {row['b']}: {_reading(row)} ({fmt_ms(row['a_value'])} vs {fmt_ms(row['b_value'])})", \
            "yes" if _reading(row).startswith("A ") and "faster" in _reading(row) else "no"
    shrunk = [(m["verification"].get("accuracy_delta_pp", 0), n) for n, m in result["models"].items()
              if _techniques(m) & SHRINKING and m.get("verification")]
    if not shrunk:
        return "no pruned or distilled model was timed", "no"
    delta, name = max(shrunk)
    return (f"no pruned or distilled model within the budget (the closest, {name}: "
            f"{delta:+.2f} pp, agreement {result['models'][name]['verification']['agreement']:.3f})"), "no"


def _shrunk_anywhere(results: dict) -> str:
    """The issue's goal is one model of all: name the configs (and batch sizes) where it was reached."""
    won = [f"{name} @{bs}" for name, r in results["configs"].items() if "fatal" not in r
           for bs in ("1", "64") if _shrunk_figure(r, bs)[1] == "yes"]
    return ("A pruned or distilled model within the budget beat the fastest int8 of the unchanged network on: "
            + (", ".join(won) if won else "none of the configs benched") + ".")


def _figures(results: dict) -> list[str]:
    lines = ["| config | figure | goal | measured | reached |", "|---|---|---|---|---|"]
    for name, r in results["configs"].items():
        if "fatal" in r:
            continue
        goals = OLIVE_GOALS.get("foreign" if r.get("brought") else name)
        for bs in ("1", "64"):
            row = _row(r, "kfopt's best ONNX vs Olive best", f"p50 @{bs}")
            lines.append(f"| {name} | kfopt's best ORT variant ({r.get('kfopt_best_onnx')}) vs Olive's pick, "
                         f"same runtime, @{bs} | at least as fast | "
                         f"{_reading_of(r, 'kfopt' + chr(39) + 's best ONNX vs Olive', f'p50 @{bs}')} | "
                         f"{_factor_reached(row, 1.0)} |")
        for i, bs in enumerate(("1", "64")):
            row = _row(r, "kfopt best vs Olive best", f"p50 @{bs}")
            goal = f"≥ {goals[i]:g}× faster" if goals else "– (none stated)"
            lines.append(f"| {name} | kfopt's cpu choice ({r['kfopt_choice'].get('chosen')}) vs Olive's pick @{bs} | "
                         f"{goal} | {_reading_of(r, 'kfopt best vs Olive best', f'p50 @{bs}')} | "
                         f"{_factor_reached(row, goals[i]) if goals else '–'} |")
        eager = EAGER_TITLES.get(r.get("eager", ""), r.get("eager", ""))
        row = _row(r, f"kfopt best vs {eager}", "p50 @1")
        lines.append(f"| {name} | kfopt's cpu choice vs {eager} @1 | "
                     f"{f'≥ {EAGER_GOAL:g}× faster' if r.get('brought') else '– (goal on foreign models)'} | "
                     f"{_reading_of(r, f'kfopt best vs {eager}', 'p50 @1')} | "
                     f"{_factor_reached(row, EAGER_GOAL) if r.get('brought') else '–'} |")
        for bs in ("1", "64"):
            text, reached = _shrunk_figure(r, bs)
            lines.append(f"| {name} | a pruned or distilled model within budget faster than the fastest int8 of the "
                         f"unchanged network @{bs} | yes, on at least one model | {text} | {reached} |")
    return lines


def _limit_section(results: dict) -> list[str]:
    limit = results.get("machine_limit")
    if not limit:
        return []
    shape = limit["shape"]
    out = ["## How close to the machine's limit", "",
           f"The ceiling: one fully-connected layer ({shape['m']} × {shape['k']}) · ({shape['k']} × {shape['n']}) "
           f"in {limit['runtime']}, {limit['threads']} thread, its weights initializers; "
           f"{limit['ops_per_call'] / 1e9:.2f} G operations a call (2·M·N·K); p50 of kfopt.bench.time_calls, best "
           "of 3 repeats, measured before and after the configs (G op/s fp32 / int8: "
           + "; ".join(f"{r['fp32'] / 1e9:.0f} / {r['int8'] / 1e9:.0f}" for r in limit.get("runs", []))
           + "), the faster kept. The int8 limit is the faster of MatMulInteger and QLinearMatMul (uint8 × int8).", "",
           "| layer | p50 | G op/s |", "|---|---|---|"]
    out += [f"| {kind} | {fmt_ms(k['p50_ms'])} | {k['ops_per_s'] / 1e9:.1f} |" for kind, k in limit["kinds"].items()]
    out += ["", "The cpu choice's rate at batch 64: its multiply-accumulates per sample (Conv, Gemm, MatMul and "
            "their quantized forms, counted from the network's fp32 ONNX export with shapes inferred: converting "
            "or quantizing a network leaves its arithmetic as it is, and for a LiteRT or OpenVINO choice that "
            "export is the ONNX of the same network), × 2 × 64 rows, over the bench's p50 at batch 64.", "",
           "| config | cpu choice | precision (limit) | MACs / sample | counted from | p50 @64 | G op/s | of the limit |",
           "|---|---|---|---|---|---|---|---|"]
    for name, r in results["configs"].items():
        ops = r.get("operations")
        if not ops:
            continue
        if "error" in ops:
            out.append(f"| {name} | | | | {ops['error']} | | | |")
            continue
        lat = r["models"][ops["chosen"]].get("latency", {}).get("64")
        if lat is None:
            out.append(f"| {name} | {ops['chosen']} | | {ops['macs']:,} | {ops['counted_from']} | not timed | | |")
            continue
        rate = 2 * ops["macs"] * 64 / (lat["p50_ms"] / 1e3)
        ceiling = limit["limit_ops_per_s"][ops["limit_precision"]]
        out.append(f"| {name} | {ops['chosen']} | {r['models'][ops['chosen']]['precision']} ({ops['limit_precision']}) "
                   f"| {ops['macs']:,} | {ops['counted_from']} | {fmt_ms(lat['p50_ms'])} | {rate / 1e9:.1f} | "
                   f"{rate / ceiling:.1%} |")
    return out + [""]


def _stages_section(results: dict) -> list[str]:
    out = ["## Slowest pipeline stages (cold run)", "",
           "The run's own time per stage (report.json `stage_times`: each task's start to end in kfp.local's log; "
           "the tasks run one after another locally).", "", "| config | pipeline | slowest stages |", "|---|---|---|"]
    for name, r in results["configs"].items():
        timed = sorted((t for t in r.get("stages", []) if t.get("seconds") is not None), key=lambda t: -t["seconds"])
        if not timed:
            continue
        top = ", ".join(f"{t['stage']} {t['seconds']:.0f} s" for t in timed[:5])
        out.append(f"| {name} | {r['pipeline']['cold']['pipeline_seconds']:.0f} s | {top} |")
    return out + [""]


def _timings(results: dict) -> list[str]:
    lines = ["| step | seconds | notes |", "|---|---|---|"]
    env = results.get("olive_env", {})
    if "error" in env:
        lines.append(f"| Olive environment | – | {env['error']} |")
    else:
        lines.append(f"| Olive environment (.venv-olive) | {env['seconds']} | "
                     f"{'created now' if env['created'] else 'already there (pins unchanged)'} |")
    if results.get("machine_limit"):
        lines.append(f"| machine limit (ONNX Runtime matrix multiplies) | {results['machine_limit']['seconds']} | |")
    for name, r in results["configs"].items():
        if r.get("brought"):
            b = r["brought"]
            lines.append(f"| {name}: train the brought model | {b['command_seconds']} | {b['epochs_run']} of at most "
                         f"{b['epochs_max']} epochs ({b['train_seconds']} s fitting), test accuracy "
                         f"{b['test_accuracy']:.4f} |")
        pipe = r.get("pipeline", {})
        if "cold" in pipe:
            cold = pipe["cold"]
            lines.append(f"| {name}: `kfopt run`, cold cache | {cold['command_seconds']} | "
                         f"{cold['tasks_executed']} tasks executed; the pipeline's own wall time "
                         f"{cold['pipeline_seconds']} s |")
        if "warm" in pipe:
            warm, cold = pipe["warm"], pipe["cold"]
            lines.append(f"| {name}: `kfopt run`, warm cache | {warm['command_seconds']} | "
                         f"{warm['tasks_executed']} tasks executed; pipeline {warm['pipeline_seconds']} s; "
                         f"warm / cold = {warm['command_seconds'] / cold['command_seconds']:.2f} (command), "
                         f"{warm['pipeline_seconds'] / cold['pipeline_seconds']:.2f} (pipeline) |")
        if r.get("olive"):
            lines.append(f"| {name}: Olive workflow | {r['olive']['command_seconds']} | search itself "
                         f"{r['olive']['seconds']} s |")
        if "measure_seconds" in r:
            lines.append(f"| {name}: timing and accuracy | {r['measure_seconds']} | {len(r['models'])} models |")
        lines.append(f"| {name}: all | {r.get('seconds')} | |")
    lines.append(f"| **total** | **{results['total_seconds']}** | |")
    return lines


def render(results: dict) -> str:
    env = results["environment"]
    shown = ("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "openvino", "nncf", "torch", "torchao",
             "torch-pruning")
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if k in shown)
    olive_env = results.get("olive_env", {})
    olive_libs = (", ".join(f"{k} {v}" for k, v in olive_env["versions"].items())
                  if "versions" in olive_env else olive_env.get("error", ""))
    any_cfg = next((c for c in results["configs"].values() if "settings" in c), None)
    s = any_cfg["settings"] if any_cfg else {}
    lines = [f"# kfopt bench, {results['created']}", "",
             f"Machine: {env['cpu']}, {env['cores']} cores ({', '.join(env['cpu_flags'])}), accelerator: "
             f"{env['accelerator']}; Python {env['python']}; {libs}. Olive side (.venv-olive): {olive_libs}.", ""]
    if s:
        lines += [f"Method: {s['threads']} thread; every model in its own process, loaded once; each timing is "
                  f"kfopt.bench.time_calls ({s['warmup']} warm-up calls, then at least {s['min_runs']} timed calls "
                  f"until the median's 95% CI is within {s['target_ci']:.0%} or {s['max_seconds']:g} s pass), repeated "
                  f"in {s['rounds']} rounds with the models interleaved (order rotated each round). p50 = median of "
                  "the rounds' medians; p10–p90 = the rounds' median 10th–90th percentiles of single calls; "
                  "calls = "
                  "timed calls over all rounds. Ratios are A / B within a round, median over rounds [range]; below 1 "
                  "A is faster or smaller; a timing reads as a difference only when at least 80% of the rounds "
                  "agree. Accuracy: the test split; Δ pp and agreement against the as-trained model's own answers. "
                  "Keras is timed as `model(x, training=False)` (eager): `model.predict` costs ~45 ms a call in this "
                  "stack and is never used. torch models (the as-trained one and the pruned and distilled .pt2 "
                  "variants) are timed as `model(x)` under `torch.inference_mode()` with `torch.set_num_threads(1)`, "
                  "the module from `torch.export.load(...).module()`. OpenVINO runs through kfopt's runner: one "
                  "static-shape program per batch size, INFERENCE_NUM_THREADS 1, precision hint f32.", ""]
    lines += ["## Summary", "", "kfopt's choice for the cpu target against the as-trained model called eagerly and "
              "against Olive's pick from the same trained model (A / B per round, median), and the pruned model "
              "within kfopt's budget that gains most over the unpruned one in the same runtime at batch 64. "
              "Details per config below.", "", *_summary(results), ""]
    lines += ["## Figures issue 12 asks for", "", "On the models kfopt did not build (brought with `--model`) and on "
              "the bundled ones. Reached: the rounds agree (≥ 80%) that A is faster by at least the goal; \"at least "
              "as fast\" also counts a no-clear-difference reading.", "", *_figures(results), "",
              _shrunk_anywhere(results), ""]
    lines += _limit_section(results)
    lines += _stages_section(results)
    for result in results["configs"].values():
        lines += _config_section(result)
    lines += ["## Time taken", "", *_timings(results), ""]
    return "\n".join(lines)


def update_readme(path: Path, markdown: str) -> None:
    text = path.read_text()
    body = re.sub(r"^# ", "### ", re.sub(r"^## ", "#### ", markdown, flags=re.M), flags=re.M)
    block = f"{README_BEGIN}\n{body}\n{README_END}"
    if README_BEGIN in text and README_END in text:
        text = text[:text.index(README_BEGIN)] + block + text[text.index(README_END) + len(README_END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
