"""Run the pipeline on this machine with kfp.local (SubprocessRunner, no containers).

Each run gets runs/<name>-<timestamp>/ with the KFP pipeline root inside and, once the report
stage finished, report.{json,md,html} copied to the top of the run folder, with the publish stage's
gate decisions added (publish.json beside them). The model registry defaults to runs/registry. Task outputs are cached
under runs/.kfp-cache keyed on inputs and kfopt's code version, so a second run with the same
settings reuses finished stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from kfopt import config as cfg_mod
from kfopt.errors import KfoptError

REPORT_FILES = ("report.json", "report.md", "report.html")


class _Console:
    """stdout during a local run: everything goes to pipeline.log, the terminal gets progress lines.

    kfp.local echoes every task's full executor input/output; a user wants to see which stage runs,
    how it ended, and kfopt's own one-line messages. `kfopt run --verbose` shows everything.
    """

    SHOW = re.compile(r"Executing task|Task '.*' finished with status|Pipeline '.*' finished|^\s*kfopt |"
                      r"^\s+\S+\s+(acc |skipped: |FAILED: )")
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, log_path: Path, terminal, verbose: bool):
        self._log = open(log_path, "a")
        self._terminal, self._verbose, self._pending = terminal, verbose, ""

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            clean = self.ANSI.sub("", line)
            if self._verbose or self.SHOW.search(clean):
                self._terminal.write((line if self._verbose else clean.split(" - INFO - ")[-1]) + "\n")
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._terminal.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._log.close()


def run(cfg: cfg_mod.RunConfig, runs_dir: Path = Path("runs"), cache: bool = True, verbose: bool = False) -> Path:
    """Run the whole pipeline; return the run folder (holding report.*, pipeline.log)."""
    from kfp import local

    from kfopt import deployment as deploy_mod
    from pipelines.kfopt_pipeline import build

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    # Node-pool placement (resources, selectors) is for clusters; kfp.local ignores it by design.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    # The image named in the deployment is for clusters; locally this venv is the environment.
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    pipeline = build(deploy_mod.load(cfg.deployment))
    cfg = with_registry(cfg, runs_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir).resolve() / f"{cfg.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, error_file = tempfile.mkstemp(prefix="kfopt-error-", suffix=".txt")
    os.close(fd)
    os.environ["KFOPT_ERROR_FILE"] = error_file
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "pipeline"),
               raise_on_error=True, enable_caching=cache, cache_root=str(Path(runs_dir).resolve() / ".kfp-cache"))
    start = time.perf_counter()
    console = _Console(run_dir / "pipeline.log", sys.stdout, verbose)
    try:
        with contextlib.redirect_stdout(console):
            task = pipeline(**cfg_mod.pipeline_params(cfg))
    except Exception as exc:  # noqa: BLE001 - kfp.local raises RuntimeError for a failed task
        console.close()
        message = Path(error_file).read_text().strip()
        log = run_dir.with_name(run_dir.name + ".failed.log")
        shutil.move(run_dir / "pipeline.log", log)
        shutil.rmtree(run_dir, ignore_errors=True)  # no half-made run folder; only its log stays
        detail = message or f"The local pipeline failed: {_Console.ANSI.sub('', str(exc))}"
        raise KfoptError(f"{detail} (full log: {log})") from None
    finally:
        console.close()
        os.environ.pop("KFOPT_ERROR_FILE", None)
        Path(error_file).unlink(missing_ok=True)
    report_dir = Path(task.output.path)
    for name in REPORT_FILES:
        shutil.copy(report_dir / name, run_dir / name)
    _add_publish(run_dir)
    (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    latest = Path(runs_dir).resolve() / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name)
    return run_dir


def with_registry(cfg: cfg_mod.RunConfig, runs_dir: Path) -> cfg_mod.RunConfig:
    """The config with an absolute model registry: empty → <runs_dir>/registry, relative → from the cwd.

    Tasks run in their own processes and folders, so a relative path would land somewhere else.
    """
    registry = cfg.publish.registry
    if not registry.startswith("gs://"):
        registry = str(Path(registry).resolve() if registry else Path(runs_dir).resolve() / "registry")
    return dataclasses.replace(cfg, publish=dataclasses.replace(cfg.publish, registry=registry))


def _add_publish(run_dir: Path) -> None:
    """Put the publish task's publish.json beside the report and its gate decisions into report.*."""
    from kfopt import publish, report

    found = sorted(run_dir.glob("pipeline/*/publish*/*/publish.json"))
    if not found:
        return
    shutil.copy(found[-1], run_dir / "publish.json")
    data = load_report(run_dir / "report.json")
    data["publish"] = publish.load(found[-1])
    report.render_in_place(data, run_dir)


def find_report(run: str, runs_dir: Path = Path("runs")) -> Path:
    """A run folder (path, name under runs/, or 'latest') → its report.json, with clear errors."""
    candidates = [Path(run), Path(runs_dir) / run]
    run_dir = next((c for c in candidates if c.is_dir()), None)
    if run_dir is None:
        known = sorted(p.name for p in Path(runs_dir).glob("*") if p.is_dir() and not p.name.startswith("."))
        raise KfoptError(f"No run {run!r}: neither {candidates[0]} nor {candidates[1]} exists. "
                         f"Runs here: {', '.join(known[-5:]) or 'none (start one with kfopt run)'}.")
    report = run_dir / "report.json"
    if not report.is_file():
        raise KfoptError(f"Run {run_dir} has no report.json: it did not finish (or is still running).")
    return report


def load_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except ValueError as exc:
        raise KfoptError(f"{path} is not a valid report ({exc}); re-run the pipeline.") from None
