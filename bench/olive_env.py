"""The Olive virtual environment (.venv-olive): created once, re-created when its pins change.

Olive needs torch; any torch spec other than the exact CPU build on this machine's disk pulls a
multi-GB CUDA build, so torch==2.13.0 goes in first, then Olive and everything else with
requirements-olive.txt as both the requirements and the constraints. A stamp holding the sha256 of
the pins marks a finished install, so an interrupted one is redone rather than half used.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import venv
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements-olive.txt"
STAMP = ".bench-installed"
PIP = ["-m", "pip", "install", "--disable-pip-version-check", "-q"]


class OliveEnvError(RuntimeError):
    """The Olive environment could not be made; the message says which step failed and why."""


def _pins_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def _torch_pin() -> str:
    for line in REQUIREMENTS.read_text().splitlines():
        if line.startswith("torch=="):
            return line.strip()
    raise OliveEnvError(f"{REQUIREMENTS} has no torch== pin.")


def _run(step: str, cmd: list[str], log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        raise OliveEnvError(f"{step} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'} "
                            f"(full log: {log})")


def ensure(venv_dir: Path, log: Path) -> dict:
    """Make sure venv_dir holds the pinned Olive; return {python, seconds, created, versions}."""
    start = time.perf_counter()
    venv_dir = Path(venv_dir).resolve()
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / STAMP
    created = not (stamp.is_file() and stamp.read_text().strip() == _pins_digest() and python.exists())
    if created:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        print(f"  creating {venv_dir} (pinned Olive, first time only, 1–2 min)…", flush=True)
        stamp.unlink(missing_ok=True)
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        except Exception as exc:  # noqa: BLE001 - reported as the Olive column's reason
            raise OliveEnvError(f"creating the virtual environment {venv_dir} failed: {exc}") from None
        _run("installing torch (CPU build)", [str(python), *PIP, _torch_pin(), "-c", str(REQUIREMENTS)], log)
        _run("installing olive-ai and its pinned dependencies",
             [str(python), *PIP, "-r", str(REQUIREMENTS), "-c", str(REQUIREMENTS)], log)
        stamp.write_text(_pins_digest() + "\n")
    probe = subprocess.run(
        [str(python), "-c", "import json, olive, onnxruntime, onnx, torch; print(json.dumps({'olive-ai': "
         "olive.__version__, 'onnxruntime': onnxruntime.__version__, 'onnx': onnx.__version__, "
         "'torch': torch.__version__}))"],
        capture_output=True, text=True, env={"OLIVE_DISABLE_TELEMETRY": "1", "PATH": "/usr/bin:/bin"})
    if probe.returncode != 0:
        lines = [ln for ln in probe.stderr.splitlines() if ln.strip()]
        raise OliveEnvError(f"importing olive in {venv_dir} failed: {lines[-1] if lines else probe.returncode}")
    versions = json.loads(probe.stdout.strip().splitlines()[-1])
    wanted = _torch_pin().split("==")[1]
    if versions["torch"] not in (wanted, f"{wanted}+cpu"):
        raise OliveEnvError(f"{venv_dir} has torch {versions['torch']}, not the pinned CPU build {wanted}.")
    return {"python": str(python), "seconds": round(time.perf_counter() - start, 1), "created": created,
            "versions": versions}

