"""Run the pipeline on this machine with kfp.local (SubprocessRunner, no containers).

Each run gets runs/<name>-<timestamp>/ with the KFP pipeline root inside and, once the report
stage finished, report.{json,md,html} copied to the top of the run folder, with the publish stage's
gate decisions added (publish.json beside them). The model registry defaults to runs/registry. Task outputs are cached
under runs/.kfp-cache keyed on inputs and kfopt's code version, so a second run with the same
settings reuses finished stages.

A run that is killed (SIGKILL, power loss) resumes: the next run with the same settings reuses
its finished stages from the cache and redoes the killed one (kfopt.resume). kfp.local's cache
hits are shown as "Task 'x' cache hit".
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from kfopt import config as cfg_mod
from kfopt import diskfull, resume
from kfopt.errors import KfoptError

REPORT_FILES = ("report.json", "report.md", "report.html")
FAILED = "failed.txt"  # in a failed run's folder: the reason; its finished stages stay for the cache


class _Console:
    """stdout during a local run: everything goes to pipeline.log, the terminal gets progress lines.

    kfp.local echoes every task's full executor input/output; a user wants to see which stage runs,
    how it ended, and kfopt's own one-line messages. `kfopt run --verbose` shows everything.
    """

    SHOW = re.compile(r"Executing task|Task '.*' (finished with status|cache hit)|Pipeline '.*' finished|^\s*kfopt |"
                      r"^\s+\S+\s+(acc |skipped: |FAILED: )")
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, log_path: Path, terminal, verbose: bool):
        self._log = open(log_path, "a")
        self._terminal, self._verbose, self._pending = terminal, verbose, ""

    def write(self, text: str) -> int:
        if self._log is not None:
            try:
                self._log.write(text)
            except OSError:  # a full disk: the stage that needs the space says so; progress still shows
                self._log = None
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            clean = self.ANSI.sub("", line)
            if self._verbose or self.SHOW.search(clean):
                self._terminal.write((line if self._verbose else clean.split(" - INFO - ")[-1]) + "\n")
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._log.flush()
        self._terminal.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._log.close()


class _CacheHits(logging.Handler):
    """Passes kfp.local's "Task x cache hit" to the console.

    kfp.local logs it with logging.info on the root logger outside its own log setup, where the
    default level drops it; without it a resumed run cannot tell reused stages from skipped ones.
    """

    PATTERN = re.compile(r"Task (\S+) cache hit")

    def __init__(self, console: _Console):
        super().__init__(logging.INFO)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        found = self.PATTERN.match(record.getMessage())
        if found:
            self._console.write(f"Task '{found.group(1)}' cache hit: its outputs from an earlier run are reused\n")


@contextlib.contextmanager
def _cache_hits_to(console: _Console):
    root = logging.getLogger()
    handler, level = _CacheHits(console), root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run(cfg: cfg_mod.RunConfig, runs_dir: Path = Path("runs"), cache: bool = True, verbose: bool = False) -> Path:
    """Run the whole pipeline; return the run folder (holding report.*, pipeline.log)."""
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
    for message in resume.recover(run_dir.parent):
        print(message, flush=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = resume.hold(run_dir)
    except OSError as exc:
        if diskfull.is_disk_full(exc):
            raise diskfull.error(run_dir.parent, f"the run folder {run_dir.name}", "--runs-dir") from None
        raise KfoptError(f"Cannot create the run folder {run_dir} ({exc.strerror}); choose another --runs-dir.") from None
    try:
        _run_pipeline(pipeline, cfg, run_dir, Path(runs_dir).resolve() / ".kfp-cache" if cache else None, verbose)
    finally:
        resume.release(lock, run_dir)
    return run_dir


def _run_pipeline(pipeline, cfg: cfg_mod.RunConfig, run_dir: Path, cache_root: Path | None, verbose: bool) -> None:
    """Run into run_dir (which holds the run lock); a failed run leaves only its log beside run_dir."""
    from kfp import local

    error_file = run_dir / resume.ERROR_FILE
    error_file.touch()
    os.environ["KFOPT_ERROR_FILE"] = str(error_file)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "pipeline"),
               raise_on_error=True, enable_caching=cache_root is not None,
               cache_root=str(cache_root or run_dir.parent / ".kfp-cache"))
    start = time.perf_counter()
    console = _Console(run_dir / "pipeline.log", sys.stdout, verbose)
    try:
        with contextlib.redirect_stdout(console), _cache_hits_to(console):
            task = pipeline(**cfg_mod.pipeline_params(cfg))
    except Exception as exc:  # noqa: BLE001 - kfp.local raises RuntimeError for a failed task
        console.close()
        message = error_file.read_text().strip()
        detail = message or f"The local pipeline failed: {_Console.ANSI.sub('', str(exc))}"
        if _finished_tasks(run_dir / "pipeline.log"):  # keep what finished: the cache points at it
            for path in resume.leftovers(run_dir):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a full disk: the message below still says it all
                (run_dir / FAILED).write_text(detail + "\n")
            raise KfoptError(f"{detail} (full log: {run_dir / 'pipeline.log'}; fix the cause and run again: the "
                             "stages that finished come from the cache)") from None
        log = run_dir.with_name(run_dir.name + ".failed.log")
        shutil.move(run_dir / "pipeline.log", log)
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing finished: no run folder, only its log stays
        raise KfoptError(f"{detail} (full log: {log})") from None
    finally:
        console.close()
        os.environ.pop("KFOPT_ERROR_FILE", None)
        error_file.unlink(missing_ok=True)
    report_dir = Path(task.output.path)
    for name in REPORT_FILES:
        shutil.copy(report_dir / name, run_dir / name)
    _add_after_run(run_dir)
    (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    latest = run_dir.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name)


def _finished_tasks(log: Path) -> int:
    """How many tasks of this run finished (kfp.local logs each), i.e. whether a failed run has work to keep."""
    try:
        text = _Console.ANSI.sub("", log.read_text(errors="replace"))
    except OSError:
        return 0
    return len(re.findall(r"Task '[^']+' finished with status SUCCESS", text))


def with_registry(cfg: cfg_mod.RunConfig, runs_dir: Path) -> cfg_mod.RunConfig:
    """The config with an absolute model registry: empty → <runs_dir>/registry, relative → from the cwd.

    Tasks run in their own processes and folders, so a relative path would land somewhere else.
    """
    registry = cfg.publish.registry
    if not registry.startswith("gs://"):
        registry = str(Path(registry).resolve() if registry else Path(runs_dir).resolve() / "registry")
    return dataclasses.replace(cfg, publish=dataclasses.replace(cfg.publish, registry=registry))


def _add_after_run(run_dir: Path) -> None:
    """What only the whole run knows, into report.*: the publish task's gate decisions (its publish.json
    copied beside the report) and the time each stage took (from kfp.local's log)."""
    from kfopt import publish, report, stage_times

    data = load_report(run_dir / "report.json")
    data["stage_times"] = stage_times.from_log((run_dir / "pipeline.log").read_text(errors="replace"))
    found = sorted(run_dir.glob("pipeline/*/publish*/*/publish.json"))
    if found:
        shutil.copy(found[-1], run_dir / "publish.json")
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
        if resume.stopped(run_dir):
            raise KfoptError(f"Run {run_dir} was stopped before it finished (its process was killed), so it has no "
                             "report; run `kfopt run` again with the same settings: the stages it finished come "
                             "from the cache.")
        if (run_dir / FAILED).is_file():
            raise KfoptError(f"Run {run_dir} failed, so it has no report: {(run_dir / FAILED).read_text().strip()} "
                             "Fix the cause and run `kfopt run` again: the stages it finished come from the cache.")
        if resume.running(run_dir):
            raise KfoptError(f"Run {run_dir} is still running; its report appears when it finishes.")
        raise KfoptError(f"Run {run_dir} has no report.json: it did not finish (or is still running).")
    return report


def load_report(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except ValueError as exc:
        raise KfoptError(f"{path} is not a valid report ({exc}); re-run the pipeline.") from None
