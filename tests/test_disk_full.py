"""A full disk under the pipeline root or the model registry: one clear error, no half-written variant.

The disk is real: a tmpfs of a few hundred KiB mounted for the test (needs root or CAP_SYS_ADMIN).
Where mounting is not allowed, the same scenarios run under RLIMIT_FSIZE instead (each file may
grow only to a set size; the kernel answers EFBIG, as a quota would), which any user may set. Each
scenario runs in a child process, so the limit or the mount never touches pytest itself. A
size-limited loop file (mkfs.ext4 + mount -o loop) needs the same privilege as tmpfs, so it adds
no coverage and is not tried. KFOPT_TEST_DISK=rlimit forces the fallback.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from publish_inputs import NAME, run_outputs  # noqa: F401 (fixture)

from kfopt import diskfull, storage
from kfopt.registry import Registry

KFOPT = str(Path(sys.executable).with_name("kfopt"))
CHILD = """
import json, sys
from pathlib import Path
from kfopt.errors import KfoptError
args = json.loads(sys.argv[1])
try:
    if args["what"] == "preprocess":
        from kfopt.data import preprocess
        preprocess.run("digits", Path(args["out"]), limit=600, seed=3)
    elif args["what"] == "savedmodel":  # a model kfopt did not build, saved as a SavedModel (TF's SaveV2 op)
        from kfopt import variant
        from kfopt.tfenv import keras
        model = keras().applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, alpha=0.35, classes=10)
        with variant.staged_dir(Path(args["out"])) as tmp:
            model.save(str(tmp / "saved_model"), save_format="tf", include_optimizer=False)
    else:
        from kfopt import publish
        publish.run(Path(args["report"]), [Path(p) for p in args["roots"]], args["registry"], args["name"],
                    Path(args["out"]), dataset_dir=Path(args["dataset"]))
    print(json.dumps({"ok": True}))
except KfoptError as exc:
    print(json.dumps({"ok": False, "error": str(exc), "type": type(exc).__name__}))
"""


class SmallDisk:
    """A folder on which writing stops after about `free` bytes: a tmpfs, else a per-file size limit."""

    def __init__(self, root: Path, free: int):
        self.path, self.free = root / "disk", free
        self.path.mkdir()
        self.tmpfs = self._mount()

    def _mount(self) -> bool:
        if os.environ.get("KFOPT_TEST_DISK") == "rlimit":  # to run the fallback where mounting works too
            return False
        size_kib = max(self.free // 1024, 16) + 16  # tmpfs counts whole pages; a little slack for folders
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0777", "tmpfs", str(self.path)],
                              capture_output=True)
        return done.returncode == 0

    @property
    def method(self) -> str:
        return "tmpfs" if self.tmpfs else "RLIMIT_FSIZE"

    def _limit(self) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.free, self.free))

    def command(self, argv: list[str], limited: bool = True) -> subprocess.CompletedProcess:
        """Run argv in a child on the small disk; `limited=False` runs it with the space freed."""
        if not limited and self.tmpfs:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.path)], check=True)
        use_rlimit = limited and not self.tmpfs
        return subprocess.run(argv, capture_output=True, text=True, preexec_fn=self._limit if use_rlimit else None,
                              timeout=300)

    def run(self, limited: bool = True, **args) -> dict:
        """Run one kfopt scenario (CHILD) in a child; its KfoptError, if any, comes back."""
        done = self.command([sys.executable, "-c", CHILD, json.dumps(args)], limited)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disks = []

    def make(free: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path, free))
        return disks[-1]

    yield make
    for disk in disks:
        disk.close()


def _hidden_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".partial-" in p.name or p.name.endswith((".tmp", ".old"))]


def test_full_pipeline_root_is_one_clear_error_and_leaves_no_partial_artifact(small_disk):
    disk = small_disk(free=64 * 1024)  # the digits splits need ~300 KiB
    out = disk.path / "pipeline" / "preprocess" / "dataset"
    result = disk.run(what="preprocess", out=str(out))
    assert not result["ok"] and result["type"] == "StorageError", result
    message = result["error"]
    assert message.startswith("No space left on ") and f"while writing {out};" in message, (disk.method, message)
    assert "point the pipeline root (kfopt run --runs-dir" in message and "\n" not in message
    if disk.tmpfs:
        assert f"No space left on {disk.path} " in message  # names the full mount, not some parent
    assert not out.exists() and not _hidden_leftovers(disk.path)


def test_tensorflow_saving_onto_a_full_disk_is_the_same_clear_error(small_disk):
    """TensorFlow reports a full disk as its own ResourceExhaustedError, not OSError; it gets the same message."""
    disk = small_disk(free=64 * 1024)  # the MobileNetV2's variables are ~1.6 MB
    out = disk.path / "pipeline" / "train" / "baseline"
    result = disk.run(what="savedmodel", out=str(out))
    assert not result["ok"] and result["type"] == "StorageError", result
    assert result["error"].startswith("No space left on ") and f"while writing {out};" in result["error"]
    assert not out.exists() and not _hidden_leftovers(disk.path)


def test_disk_full_is_recognised_in_every_shape():
    import errno

    assert diskfull.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert diskfull.is_disk_full(OSError(errno.EFBIG, "File too large"))
    assert diskfull.is_disk_full(RuntimeError("part-00000.tempstate1; No space left on device [Op:SaveV2]"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise ValueError("could not write the model") from inner
    except ValueError as outer:
        assert diskfull.is_disk_full(outer)
    assert not diskfull.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not diskfull.is_disk_full(MemoryError("out of memory"))


def test_kfopt_run_on_a_full_runs_dir_says_so_in_one_line_and_keeps_only_finished_stages(small_disk):
    disk = small_disk(free=200 * 1024)  # the 600-sample splits fit; the augmented copy does not
    done = disk.command([KFOPT, "run", "--runs-dir", str(disk.path), "--set", "data.limit=600"])
    assert done.returncode == 2, (disk.method, done.stdout[-2000:], done.stderr[-2000:])
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("kfopt: error: kfopt augment: No space left on ") and "Traceback" not in done.stdout
    assert "/augment/augmented; free space there or point the pipeline root (kfopt run --runs-dir" in line
    # what finished (preprocess) stays for the cache once space is freed; nothing half-written does
    (kept,) = [p for p in disk.path.glob("digits_cnn-*") if p.is_dir()]
    assert "come from the cache" in line and list(kept.glob("pipeline/*/preprocess/dataset/schema.json"))
    assert not list(kept.glob("pipeline/*/augment/augmented/*"))
    assert not _hidden_leftovers(disk.path)


def test_full_registry_is_one_clear_error_and_publishing_again_after_freeing_space_works(small_disk, run_outputs,
                                                                                        tmp_path):
    report = run_outputs["report_dir"] / "report.json"
    baseline = next(p for p in run_outputs["roots"] if (p / "kfopt.json").is_file())
    biggest = max(p.stat().st_size for p in baseline.rglob("*") if p.is_file())
    small = report.stat().st_size + 8 * 1024  # room for the claim and the report, not for the baseline model
    if small >= biggest:
        pytest.skip(f"the baseline's largest file ({biggest} B) fits where the report does ({small} B)")
    disk = small_disk(free=small)
    reg = disk.path / "registry"
    args = dict(what="publish", report=str(run_outputs["report_dir"]), roots=[str(p) for p in run_outputs["roots"]],
                registry=str(reg), name=NAME, dataset=str(run_outputs["dataset"]))
    result = disk.run(out=str(tmp_path / "out1"), **args)
    assert not result["ok"] and result["type"] == "StorageError", result
    message = result["error"]
    assert message.startswith("No space left on ") and "publish.registry" in message and "\n" not in message
    assert str(reg / "models" / "trained_models" / NAME / "v1") in message, (disk.method, message)
    r = Registry(str(reg))
    assert r.versions(NAME) == [], "a half-published version counts as published"
    assert not storage.exists(r.trained(NAME, 1)) and not _hidden_leftovers(reg)
    assert r.promoted("cpu", NAME) is None

    again = disk.run(limited=False, out=str(tmp_path / "out2"), **args)  # space freed
    assert again["ok"], again
    assert r.versions(NAME) == [2] and r.promoted("cpu", NAME).version == 2
    assert not _hidden_leftovers(reg)
