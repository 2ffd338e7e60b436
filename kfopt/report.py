"""The report: leaderboard JSON, Markdown and a self-contained HTML page with plots.

Inputs are the results.json of each benchmark task (one per node pool); rows keep the hardware
they were measured on. The same content feeds the KFP Metrics/Markdown/HTML artifacts.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from kfopt import report_search, select, stage_times, stats, variant
from kfopt.errors import KfoptError

REPORT_JSON = "report.json"
TOO_FEW_HEADING = "Too few test rows to tell (kept: not confidently worse than the budget)"


def merge(bench_dirs: list[Path]) -> dict[str, Any]:
    rows, environments, budget, baseline, settings, serving = [], {}, None, None, None, {}
    for d in bench_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise KfoptError(f"{d} holds no benchmark results (results.json missing); did the benchmark finish?")
        data = json.loads(path.read_text())
        environments[data["hardware"]] = data["environment"]
        budget = budget or data["budget"]
        settings = settings or data["settings"]
        if data["baseline"].get("accuracy") is not None:
            baseline = data["baseline"]
        rows.extend(data["results"])
        serving.update(data.get("serving") or {})  # per target: the serving node's cores and thread counts
    return {"rows": rows, "environments": environments, "budget": budget, "baseline": baseline, "settings": settings,
            "serving": serving}


def failures(report: dict[str, Any]) -> list[str]:
    """One line per failed row: a stage that broke on this model (the run went on without it) or a
    variant whose benchmark run crashed, with the error."""
    return [f"{r['name']}: {r.get('reason')}" for r in report["rows"] if r.get("status") == "failed"]


def not_measured(report: dict[str, Any]) -> list[str]:
    """One line per row that was skipped, or measured but rejected, with the reason (failures: `failures`)."""
    lines = []
    for r in report["rows"]:
        if r.get("status") == "failed":
            continue
        if r.get("status") != "ok":
            lines.append(f"{r['name']} ({r.get('hardware')}): {r['status']} — {r.get('reason')}")
        elif not r["verification"]["passed"]:
            lines.append(f"{r['name']}: rejected — {r['verification']['reason']}")
        elif wrong := select.batch_failure(r, "size"):  # any batch: right at one batch size, wrong at another
            lines.append(f"{r['name']}: passes at batch {', '.join(_batches_passed(r)) or '—'}, rejected for "
                         f"objectives at the others — {wrong}")
    return lines


def _batches_passed(row: dict[str, Any]) -> list[str]:
    return [b for b, v in (row.get("verification_by_batch") or {}).items() if v.get("passed")]


def _verify_cell(row: dict[str, Any], ver: dict[str, Any]) -> str:
    """pass / REJECTED, whether the test rows were too few to tell, and the batch sizes where the per-batch
    verification failed (`pass, FAIL@1`)."""
    if not ver.get("passed"):
        return "REJECTED"
    bad = [b for b, v in (row.get("verification_by_batch") or {}).items() if not v.get("passed")]
    cell = "pass (too few rows to tell)" if ver.get("verdict") == stats.TOO_FEW else "pass"
    return f"{cell}, FAIL@{','.join(bad)}" if bad else cell


def _delta_cell(ver: dict[str, Any]) -> str:
    """'-0.28 pp [-0.83, +0.28], n=360': the delta, its paired interval and its rows (a point, in older results)."""
    return stats.describe(ver) if "delta_ci_pp" in ver else _f(ver.get("accuracy_delta_pp"), "+.2f")


def undecided(report: dict[str, Any]) -> list[str]:
    """One line per variant kept although its test rows were too few to tell it from the budget (kfopt.verify)."""
    return [f"{r['name']}: {r['verification']['reason']}" for r in report["rows"]
            if r.get("status") == "ok" and r["verification"].get("verdict") == stats.TOO_FEW]


def baseline_warning(report: dict[str, Any]) -> list[str]:
    """The implausible-baseline warning (kfopt.models.brought) as a headline and its likely causes; [] if none."""
    w = report.get("baseline_warning")
    if not w:
        return []
    return [f"WARNING: the brought model's test accuracy {w['accuracy']:.4f} is below 1.5 × chance "
            f"({w['threshold']:.4f}), and every variant below is judged against it. Likely causes:"] + \
        [f"  - {cause}" for cause in w["causes"]]


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in report["rows"]:
        lat1 = r.get("latency", {}).get("1", {})
        thr = max((int(b) for b in r.get("latency", {})), default=None)
        ver = r.get("verification", {})
        status = _verify_cell(r, ver) if r.get("status") == "ok" else r.get("status", "?")
        status = "FAILED" if status == "failed" else status
        acc = _f(r.get("accuracy"), ".4f") + (f" (AUC {r['auc']:.3f})" if r.get("auc") is not None else "")
        out.append([r["name"], r["format"], r.get("precision", ""), r.get("hardware", ""), acc,
                    _delta_cell(ver), status, _f(lat1.get("p50_ms"), ".3f"),
                    _f(lat1.get("p99_ms"), ".3f"),
                    _f(r["latency"][str(thr)]["throughput"], ".0f") + f" @{thr}" if thr else "—",
                    _f(r.get("size_bytes", 0) / 1024 if "size_bytes" in r else None, ".1f"),
                    _f(r.get("size_gzip_bytes", 0) / 1024 if "size_gzip_bytes" in r else None, ".1f"),
                    _threads_cell(r), _sweep_cell(r)])
    return out


def _threads_cell(row: dict[str, Any]) -> str:
    """p50 at the smallest batch per thread count, when a finalist was timed at more than one (`1t 0.41 · 8t 0.09`)."""
    timed = select.measurements(row) if row.get("status") == "ok" else {}
    if len(timed) < 2:
        return "—"
    batch = min(int(b) for m in timed.values() for b in m.get("latency", {}))
    cells = [f"{t}t {m['latency'][str(batch)]['p50_ms']:.3f}"
             for t, m in sorted(timed.items(), key=lambda kv: int(kv[0])) if str(batch) in m.get("latency", {})]
    return (f"@{batch}: " if batch != 1 else "") + " · ".join(cells)


def _sweep_cell(row: dict[str, Any]) -> str:
    """The batch where a finalist's batch sweep saturated, its throughput and thread count (`32 @8t 5120/s`)."""
    swept = [(t, m["sweep"]) for t, m in select.measurements(row).items() if (m.get("sweep") or {}).get("best_batch")]
    if row.get("status") != "ok" or not swept:
        return "—"
    t, sweep = max(swept, key=lambda ts: max(p["throughput"] for p in ts[1]["points"]))
    point = next(p for p in sweep["points"] if p["batch"] == sweep["best_batch"])
    return f"{sweep['best_batch']} @{t}t {point['throughput']:.0f}/s"


HEADERS = ["variant", "format", "precision", "hw", "accuracy", "Δ pp [CI], rows", "verify", "p50@1 ms", "p99@1 ms",
           "throughput/s", "size KiB", "gzip KiB", "p50 ms by threads", "best batch (sweep)"]


def text_table(report: dict[str, Any]) -> str:
    rows = [HEADERS] + table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {line}" for line in not_measured(report)]
    unsure = [f"  {line}" for line in undecided(report)]
    failed = [f"  {line}" for line in failures(report)]
    choice = [f"  {t:<5} → {c['chosen'] or 'none'}: {c['reason']}" for t, c in report["choices"].items()]
    warning = baseline_warning(report)
    times = [stage_times.slowest(report["stage_times"])] if report.get("stage_times") else []
    return "\n".join((warning + [""] if warning else []) + lines +
                     (["", "Failed (the run went on without them):"] + failed if failed else []) +
                     (["", "Not measured / rejected:"] + notes if notes else []) +
                     (["", f"{TOO_FEW_HEADING}:"] + unsure if unsure else []) +
                     ["", "Choice per target:"] + choice + ([""] + times if times else []))


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# kfopt report — {report['name']}", "",
             f"Baseline accuracy {report['baseline']['accuracy']:.4f}; budget {report['budget']['accuracy_budget_pp']} pp, "
             f"min agreement {report['budget']['min_agreement']}; a variant is rejected for accuracy only when it "
             f"loses more than the budget with {report['budget'].get('confidence', stats.CONFIDENCE):.0%} "
             "confidence (paired bootstrap over the test rows).", ""]
    warning = baseline_warning(report)
    lines += [f"> **{line}**" if i == 0 else f"> {line.strip()}" for i, line in enumerate(warning)]
    lines += ([""] if warning else []) + ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    if failures(report):
        lines += ["", "## Failed (the run went on without them)", ""] + [f"- {line}" for line in failures(report)]
    lines += ["", "## Choice per target", ""]
    for target, c in report["choices"].items():
        lines.append(f"- **{target}**: {c['chosen'] or 'none'} — {c['reason']}"
                     + (f" Runner-up {c['runner_up']} ({c['runner_up_reason']})." if c.get("runner_up") else ""))
    if report.get("publish"):  # added by local_run from the publish stage
        from kfopt import publish

        lines += [""] + publish.markdown(report["publish"]).splitlines()
    lines += ["", f"Pareto front (p50@1, accuracy drop, gzip size): {', '.join(report['pareto']) or '—'}", "",
              "## Not measured or rejected", ""]
    lines += [f"- {line}" for line in not_measured(report)]
    if undecided(report):
        lines += ["", f"## {TOO_FEW_HEADING}", ""] + [f"- {line}" for line in undecided(report)]
    lines += ["", "## Technique details", ""] + [f"- {line}" for line in technique_details(report)]
    lines += report_search.markdown(report)
    if report.get("stage_times"):
        lines += ["", "## Time per stage", "", stage_times.slowest(report["stage_times"]), "",
                  "| stage | seconds | share |", "|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in stage_times.table(report["stage_times"])]
    lines += ["", "## Environment", ""]
    for hw, env in report["environments"].items():
        lines.append(f"- {hw}: {env['cpu']}, {env['cores']} cores, flags {', '.join(env['cpu_flags']) or 'none'}, "
                     f"accelerator {env['accelerator']}")
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in report["rows"] if r.get("status") == "ok" and "1" in r.get("latency", {})]
    out = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in measured:
        front = r["name"] in report["pareto"]
        ax.scatter(r["latency"]["1"]["p50_ms"], r["accuracy"], s=60 if front else 30,
                   marker="*" if front else "o", c="tab:green" if r["verification"]["passed"] else "tab:red")
        if front or r["name"] == report["baseline"].get("name"):  # label what matters; the table has the rest
            ax.annotate(r["name"], (r["latency"]["1"]["p50_ms"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Latency vs accuracy (★ Pareto front, red = rejected)")
    out["latency_accuracy"] = _png(fig)
    plt.close(fig)
    sized = [r for r in report["rows"] if "size_bytes" in r]
    if sized:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(sized) + 1.2))
        names = [r["name"] for r in sized]
        ax.barh(names, [r["size_bytes"] / 1024 for r in sized], label="raw")
        ax.barh(names, [r["size_gzip_bytes"] / 1024 for r in sized], label="gzip", alpha=0.7)
        ax.set_xlabel("KiB")
        ax.legend()
        ax.set_title("Model size")
        out["sizes"] = _png(fig)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(measured):
        bs = sorted(int(b) for b in r["latency"])
        ax.plot(bs, [r["latency"][str(b)]["throughput"] for b in bs], marker="os^Dv"[i // 10 % 5],
                linestyle=("-", "--", ":")[i // 10 % 3], label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s")
    ax.set_title("Throughput by batch size")
    ax.legend(fontsize=6, ncol=2)
    out["throughput"] = _png(fig)
    plt.close(fig)
    fig = report_search.plot(report, plt)
    if fig is not None:
        out["searches"] = _png(fig)
        plt.close(fig)
    cm = report.get("confusion")
    if cm:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.imshow(cm["matrix"], cmap="Blues")
        ax.set_xticks(range(len(cm["labels"])), cm["labels"], fontsize=7)
        ax.set_yticks(range(len(cm["labels"])), cm["labels"], fontsize=7)
        for i, row in enumerate(cm["matrix"]):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, count, ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion matrix — {cm['variant']} (test split)")
        out["confusion"] = _png(fig)
        plt.close(fig)
    return out


def _maybe_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def technique_details(report: dict[str, Any]) -> list[str]:
    """What each technique did, from the variants' kfopt.json extra: sparsity, float-kept layers, builders."""
    out, seen = [], set()
    for r in report["rows"]:
        extra = r.get("extra") or {}
        if r["name"] in seen or not extra:
            continue
        seen.add(r["name"])
        if "sparsity" in extra:
            sp = extra["sparsity"]
            layers = ", ".join(f"{k} {v:.3f}" for k, v in sp.get("layers", {}).items())
            out.append(f"{r['name']}: sparsity {sp.get('overall', 0):.3f} overall ({layers})")
        fallback = _maybe_json(extra.get("fallback"))
        if isinstance(fallback, dict):
            kept = ", ".join(fallback.get("float_layers") or []) or "none"
            out.append(f"{r['name']}: int8 in-stage check on the {fallback.get('checked_on', 'validation split')}; "
                       f"{len(fallback.get('attempts', []))} attempt(s); kept in float: {kept}"
                       + (f"; no retry: {fallback['no_retry']}" if fallback.get("no_retry") else ""))
        check = _maybe_json(extra.get("in_stage_check"))
        if isinstance(check, dict) and not isinstance(fallback, dict):
            out.append(f"{r['name']}: in-stage check against the baseline on the validation split "
                       f"({check.get('budget_left_pp', '?')} pp of the budget left): {check.get('reason')}")
        if "teacher_parameters" in extra:
            out.append(f"{r['name']}: {extra['parameters']:,} parameters vs the teacher's {extra['teacher_parameters']:,}")
        if "builder" in extra:
            b = extra["builder"]
            out.append(f"{r['name']}: built by {b.get('module')} {b.get('version')} in {extra.get('build_seconds')} s; "
                       f"parsed: {extra.get('parsed')}; {len(extra.get('parse_errors') or [])} parse error(s)")
    return out


def html_page(report: dict[str, Any], md: str) -> str:
    esc = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table_rows(report))
    choices = "".join(f"<li><b>{esc(t)}</b>: {esc(str(c['chosen'] or 'none'))} — {esc(c['reason'])}"
                      + (f"<br><small>runner-up {esc(c['runner_up'])}: {esc(c['runner_up_reason'])}</small>"
                         if c.get("runner_up") else "") + "</li>" for t, c in report["choices"].items())
    imgs = "".join(f'<figure><img alt="{k}" src="data:image/png;base64,{v}"></figure>' for k, v in plots(report).items())
    details = "".join(f"<li>{esc(line)}</li>" for line in technique_details(report))
    failed = "".join(f"<li>{esc(line)}</li>" for line in failures(report))
    failed = f"<h2>Failed (the run went on without them)</h2><ul>{failed}</ul>" if failed else ""
    unsure = "".join(f"<li>{esc(line)}</li>" for line in undecided(report))
    unsure = f"<h2>{TOO_FEW_HEADING}</h2><ul>{unsure}</ul>" if unsure else ""
    env = "".join(f"<li>{esc(hw)}: <code>{esc(json.dumps(e))}</code></li>" for hw, e in report["environments"].items())
    times = ""
    if report.get("stage_times"):
        times = (f"<h2>Time per stage</h2><p>{esc(stage_times.slowest(report['stage_times']))}</p><table>"
                 "<tr><th>stage</th><th>seconds</th><th>share</th></tr>" + "".join(
                     "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                     for row in stage_times.table(report["stage_times"])) + "</table>")
    warning = baseline_warning(report)
    alarm = (f'<div class="warning" style="border:2px solid #b00;background:#fee;padding:.4em 1em"><p><b>'
             f'{esc(warning[0])}</b></p><ul>{"".join(f"<li>{esc(c.strip()[2:])}</li>" for c in warning[1:])}'
             "</ul></div>") if warning else ""
    publishing = ""
    if report.get("publish"):
        from kfopt import publish

        pub = report["publish"]
        publishing = (f"<h2>Publishing</h2><p>{esc(publish.headline(pub))}</p><ul>"
                      + "".join(f"<li>{esc(line)}</li>" for line in publish.summary_lines(pub)) + "</ul>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>kfopt report — {esc(report['name'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}code{{font-size:11px}}</style></head><body>
<h1>kfopt report — {esc(report['name'])}</h1><p>{esc(report['created'])}. Baseline accuracy {report['baseline']['accuracy']:.4f};
accuracy budget {report['budget']['accuracy_budget_pp']} pp; min top-1 agreement {report['budget']['min_agreement']}.</p>
{alarm}<h2>Choice per target</h2><ul>{choices}</ul>{publishing}
<h2>Leaderboard</h2><table><tr>{''.join(f'<th>{h}</th>' for h in HEADERS)}</tr>{rows}</table>{failed}
<p>Pareto front: {esc(', '.join(report['pareto']) or '—')}</p>
<h2>Not measured or rejected</h2><ul>{''.join(f'<li>{esc(line)}</li>' for line in not_measured(report))}</ul>
{unsure}
<h2>Plots</h2>{imgs}<h2>Technique details</h2><ul>{details}</ul>{report_search.html(report)}{times}
<h2>Environment</h2><ul>{env}</ul></body></html>"""


def kfp_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Per-variant scalars for the KFP Metrics artifact (the UI's run comparison)."""
    out: dict[str, Any] = {}
    for r in report["rows"]:
        if r.get("status") != "ok":
            continue
        key = f"{r['name']}@{r['hardware']}"
        out[f"{key}.accuracy"] = r["accuracy"]
        out[f"{key}.verified"] = r["verification"]["passed"]
        out[f"{key}.size_gzip_kib"] = r["size_gzip_bytes"] / 1024
        for bs, stats in r["latency"].items():
            out[f"{key}.p50_ms_b{bs}"] = stats["p50_ms"]
            out[f"{key}.throughput_b{bs}"] = stats["throughput"]
    return out


def confusion(report: dict[str, Any], bench_dirs: list[Path], dataset_dir: Path | None) -> dict[str, Any] | None:
    """Confusion matrix of the variant chosen first (cpu, else any target) on the test split."""
    import numpy as np

    from kfopt import verify
    from kfopt.data import dataset as ds_mod

    chosen = next((c for c in report["choices"].values() if c.get("chosen")), None)
    if chosen is None or dataset_dir is None:
        return None
    ds = ds_mod.read(dataset_dir)
    y = ds.split("test")[1]
    for d in bench_dirs:
        pred_path = Path(d) / "predictions" / f"{chosen['chosen']}.npy"
        if pred_path.is_file():
            pred = verify.labels(np.load(pred_path), ds.schema.task)
            n = ds.schema.num_classes
            matrix = np.zeros((n, n), dtype=int)
            np.add.at(matrix, (y, pred), 1)
            return {"variant": chosen["chosen"], "labels": ds.schema.class_names, "matrix": matrix.tolist()}
    return None


def build(bench_dirs: list[Path], name: str, targets: list[str], objectives: dict[str, str] | None = None,
          dataset_dir: Path | None = None) -> dict[str, Any]:
    from kfopt import publish

    report = merge(bench_dirs)
    base = next((r for r in report["rows"] if r["name"] == (report["baseline"] or {}).get("name")), {})
    report["name"] = publish.resolve_name(name, base.get("params") or {})
    report["baseline_warning"] = (base.get("extra") or {}).get("implausible_baseline")
    report["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    report["choices"] = select.choose(report["rows"], targets, objectives, report.get("serving"))
    report["pareto"] = select.pareto_front(report["rows"])
    report["confusion"] = confusion(report, bench_dirs, dataset_dir)
    return report


def write(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    md = markdown(report)
    with variant.staged_dir(Path(out_dir)) as tmp:
        (tmp / REPORT_JSON).write_text(json.dumps(report, indent=2))
        (tmp / "report.md").write_text(md)
        (tmp / "report.html").write_text(html_page(report, md))
    return {k: Path(out_dir) / f for k, f in (("json", REPORT_JSON), ("md", "report.md"), ("html", "report.html"))}


def render_in_place(report: dict[str, Any], run_dir: Path) -> None:
    """Rewrite report.json/md/html inside an existing run folder, each file replaced atomically."""
    md = markdown(report)
    for name, text in ((REPORT_JSON, json.dumps(report, indent=2)), ("report.md", md),
                       ("report.html", html_page(report, md))):
        tmp = Path(run_dir) / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, Path(run_dir) / name)


def run(bench_dirs: list[Path], out_dir: Path, *, name: str, targets: list[str],
        objectives: dict[str, str] | None = None, dataset_dir: Path | None = None) -> dict[str, Any]:
    report = build(bench_dirs, name, targets, objectives, dataset_dir)
    write(report, out_dir)
    return report
