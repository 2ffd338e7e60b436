"""What a task hands to the Kubeflow UI beyond its main folder: metrics, metadata, HTML/Markdown views.

`kfopt.stages.execute` calls `before` and `after` around every stage function. The KFP artifacts
arrive as plain objects (`.path`, `.uri`, `.metadata`, `log_metric`, `log_confusion_matrix`), so this
module does not import kfp. Stages without an entry here get the generic treatment: their metrics
logged to a `metrics` output (if they have one) and their scalar results on the main artifact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kfopt.stage import log_metrics


def before(stage: str, kwargs: dict[str, Any], artifacts: dict[str, Any]) -> None:
    if stage == "publish" and not kwargs["registry_uri"]:
        from kfopt.publish import default_registry

        kwargs["registry_uri"] = default_registry(artifacts["blessings"].uri)


def after(stage: str, main: str, result: dict[str, Any], artifacts: dict[str, Any]) -> None:
    """`main`: the stage's main output artifact, which gets the scalar results as metadata."""
    if stage == "train":
        from kfopt.models.train import curves_html

        Path(artifacts["curves"].path).write_text(curves_html(result.pop("history", {})))
    elif stage == "report":
        out = Path(artifacts["report_dir"].path)
        shutil.copy(out / "report.md", artifacts["markdown"].path)
        shutil.copy(out / "report.html", artifacts["html"].path)
        confusion = result.get("confusion") or {}
        if confusion:
            artifacts["confusion"].log_confusion_matrix(confusion["labels"], confusion["matrix"])
        # kfp.local counts a cached task as complete only if every output has a file, metadata-only ones too
        Path(artifacts["confusion"].path).write_text(json.dumps(confusion))
        from kfopt.report import kfp_metrics

        log_metrics(artifacts["metrics"], kfp_metrics(result))
        return
    elif stage == "publish":
        shutil.copy(Path(artifacts["blessings"].path) / "publish.md", artifacts["markdown"].path)
        artifacts["blessings"].metadata.update({t: b["decision"] for t, b in result["targets"].items()})
        log_metrics(artifacts["metrics"], {f"{t}.blessed": b["blessed"] for t, b in result["targets"].items()}
                    | {"version": result["version"] or 0})
        return
    elif stage == "benchmark":
        artifacts["results"].metadata["variants"] = len(result["results"])
        return
    artifacts[main].metadata.update({k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))})
    if "metrics" in artifacts and hasattr(artifacts["metrics"], "log_metric"):
        log_metrics(artifacts["metrics"], result)
