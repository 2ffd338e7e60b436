"""The report's view of the searches: every point a technique tried, as a table and a plot, the kept one marked.

A search (kfopt.search) is recorded in the kept variant's kfopt.json `extra["search"]`; benchmark rows
carry `extra`, so the report finds every search there (one per variant, whatever its hardware row).
Objectives that are per-batch dicts (the ORT search times p50 at each batch size) are drawn and listed
by their geometric mean, the value the search ranked by.
"""

from __future__ import annotations

import math
from typing import Any


def searches(report: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"variant", **record}] once per variant that holds a search record, in leaderboard order."""
    out, seen = [], set()
    for r in report["rows"]:
        record = (r.get("extra") or {}).get("search")
        if isinstance(record, dict) and record.get("points") and r["name"] not in seen:
            seen.add(r["name"])
            out.append({"variant": r["name"], **record})
    return out


def objective_value(point: dict[str, Any], objective: str) -> float | None:
    value = point.get(objective)
    if isinstance(value, dict):
        values = [float(v) for v in value.values() if v]
        return math.exp(sum(map(math.log, values)) / len(values)) if values else None
    return None if value is None else float(value)


def _cell(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def rows(record: dict[str, Any]) -> list[list[str]]:
    """setting | passed | Δ accuracy pp | objective | seconds | kept, one per point tried, then the untried."""
    out = []
    for p in record["points"]:
        delta = p.get("accuracy_delta_pp")
        out.append([p["setting"], "yes" if p.get("passed") else "no",
                    "—" if delta is None else f"{delta:+.2f}", _cell(objective_value(p, record["objective"])),
                    _cell(p.get("seconds")), "◀ kept" if p["setting"] == record.get("chosen") else ""])
    out += [[s, "not tried", "—", "—", "—", ""] for s in record.get("not_tried") or []]
    return out


HEADERS = ["setting", "passed", "Δ pp", "objective", "seconds", ""]


def summary(record: dict[str, Any]) -> str:
    kept = record.get("chosen") or "none passed"
    return (f"{record['variant']}: {record['knob']} searched ({len(record['points'])} tried in "
            f"{record.get('seconds', 0):.0f} s of a {record.get('time_budget_s', 0):g} s budget, "
            f"{record.get('stopped', '')}); objective {record['objective']} ({record.get('rule', '')}); kept {kept}")


def markdown(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for record in searches(report):
        lines += ["", f"**{summary(record)}**", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows(record)]
    return (["", "## Searches"] + lines) if lines else []


def html(report: dict[str, Any]) -> str:
    import html as h

    parts = []
    for record in searches(report):
        body = "".join("<tr>" + "".join(f"<td>{h.escape(c)}</td>" for c in row) + "</tr>" for row in rows(record))
        parts.append(f"<p><b>{h.escape(summary(record))}</b></p><table><tr>"
                     + "".join(f"<th>{h.escape(c)}</th>" for c in HEADERS) + f"</tr>{body}</table>")
    return f"<h2>Searches</h2>{''.join(parts)}" if parts else ""


def plot(report: dict[str, Any], plt) -> Any | None:
    """One panel per search: objective (x) against accuracy delta (y); passing green, failing red, kept ★."""
    found = [r for r in searches(report) if any(objective_value(p, r["objective"]) is not None for p in r["points"])]
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.6), squeeze=False)
    for ax, record in zip(axes[0], found):
        for p in record["points"]:
            x, y = objective_value(p, record["objective"]), p.get("accuracy_delta_pp")
            if x is None or y is None:
                continue
            kept = p["setting"] == record.get("chosen")
            ax.scatter(x, y, marker="*" if kept else "o", s=140 if kept else 30,
                       c="tab:green" if p.get("passed") else "tab:red", zorder=3)
            ax.annotate(p["setting"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(-float(record.get("budget_left_pp", report["budget"]["accuracy_budget_pp"])), ls="--", c="grey",
                   lw=0.8)
        ax.set_xlabel(record["objective"])
        ax.set_ylabel("accuracy Δ pp vs baseline (validation)")
        ax.set_title(f"{record['variant']}: {record['knob']}", fontsize=8)
    fig.suptitle("Searches (★ kept, red = failed the in-stage check, dashed = budget)", fontsize=9)
    return fig
