"""The model variant artifact: a folder with model file(s) and `kfopt.json`.

Every stage after training reads `kfopt.json` and never guesses from file names. The file records
what the variant is (format, precision, target), how to feed it (input/output spec with the int8
scale and zero point), where it came from (parent, technique, parameters) and the sha256 of every
file, which `read()` checks so a corrupted or swapped model file is caught before it is measured.
A variant that a stage could not make (no GPU, technique switched off) is still written, with
status "skipped" and the reason, so the report can show it honestly; a stage that broke on this
model leaves one with status "failed" and the error instead (kfopt.stage.optional_stage). Neither
holds a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from kfopt import __version__, diskfull
from kfopt.errors import ArtifactError

META_FILE = "kfopt.json"
#: 2: `framework` is the source framework (keras, torch, onnx) and `runtime` what runs the file
#: (tensorflow, litert, onnxruntime, openvino, tensorrt, xla). 1 (before 2026-12) had one overloaded
#: `framework`: the baseline's "tensorflow", its children's runtime; `from_dict` reads it as 2.
SCHEMA_VERSION = 2
_V1_RUNTIMES = {"tensorflow": "tensorflow", "tensorflow-xla": "xla"}


@dataclasses.dataclass
class TensorSpec:
    """One input or output tensor. `shape` uses None for the dynamic batch dimension."""

    name: str
    shape: list[int | None]
    dtype: str = "float32"
    scale: float | None = None
    zero_point: int | None = None


@dataclasses.dataclass
class VariantMeta:
    name: str
    format: str
    precision: str
    target: str
    input: TensorSpec
    output: TensorSpec
    task: str = "multiclass"  # or "binary"
    framework: str = ""  # the source framework of the model this variant came from: keras, torch, onnx
    runtime: str = ""  # what runs this variant's file: tensorflow, litert, onnxruntime, openvino, tensorrt, xla
    technique: str = "train"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    parent: str | None = None
    status: str = "ok"  # or "skipped" (not made here, by design) or "failed" (the stage broke)
    reason: str | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    kfopt_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VariantMeta":
        data = dict(data)
        if data.get("schema_version", 1) == 1:  # written by kfopt before 2026-12: only Keras sources existed
            old = data.get("framework", "")
            data["runtime"] = _V1_RUNTIMES.get(old, old)
            data["framework"] = "keras"
            data["schema_version"] = SCHEMA_VERSION
        data["input"] = TensorSpec(**data["input"])
        data["output"] = TensorSpec(**data["output"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(variant_dir: Path) -> list[Path]:
    """Every file of the variant except its metadata, sorted, as paths relative to the folder."""
    root = Path(variant_dir)
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != META_FILE)


def write(variant_dir: Path, meta: VariantMeta) -> VariantMeta:
    """Record checksums of the folder's files and write kfopt.json (atomically)."""
    root = Path(variant_dir)
    meta.files = {str(rel): sha256_file(root / rel) for rel in model_files(root)}
    tmp = root / f".{META_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, root / META_FILE)
    return meta


def write_skipped(variant_dir: Path, name: str, format: str, target: str, reason: str,
                  technique: str, parent: str | None = None, **extra: Any) -> VariantMeta:
    """A variant that could not be made here, with the reason; never a fabricated model."""
    return _write_note(variant_dir, "skipped", name, format, target, reason, technique, parent, extra)


def write_failed(variant_dir: Path, name: str, format: str, target: str, reason: str,
                 technique: str, parent: str | None = None, **extra: Any) -> VariantMeta:
    """A variant standing for a stage that broke on this model: the error as the reason, no model."""
    return _write_note(variant_dir, "failed", name, format, target, reason, technique, parent, extra)


def _write_note(variant_dir: Path, status: str, name: str, format: str, target: str, reason: str,
                technique: str, parent: str | None, extra: dict[str, Any]) -> VariantMeta:
    Path(variant_dir).mkdir(parents=True, exist_ok=True)
    meta = VariantMeta(name=name, format=format, precision=extra.pop("precision", "n/a"), target=target,
                       input=TensorSpec("input", []), output=TensorSpec("output", []),
                       technique=technique, parent=parent, status=status, reason=reason, extra=extra)
    return write(variant_dir, meta)


def read(variant_dir: Path, verify: bool = True) -> VariantMeta:
    """Read kfopt.json; with verify, check every recorded sha256 and that no file is missing."""
    root = Path(variant_dir)
    path = root / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{root} is not a kfopt model variant: {META_FILE} is missing.")
    try:
        meta = VariantMeta.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} is not a valid {META_FILE} ({exc}); re-run the stage that made it.") from None
    if verify:
        for rel, expected in meta.files.items():
            file = root / rel
            if not file.is_file():
                raise ArtifactError(f"Variant {meta.name!r}: file {rel} listed in {META_FILE} is missing from {root}.")
            actual = sha256_file(file)
            if actual != expected:
                raise ArtifactError(
                    f"Variant {meta.name!r}: {rel} does not match its checksum in {META_FILE} "
                    f"(expected sha256 {expected[:12]}…, found {actual[:12]}…). The file was changed or "
                    "corrupted after it was written; re-run the stage that made it.")
    return meta


def discover(root: Path) -> list[Path]:
    """All variant folders under `root` (a variant, or a folder of variants), sorted by path."""
    root = Path(root)
    if (root / META_FILE).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(META_FILE))


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to `final` only if the block succeeds.

    A stage that fails half-way leaves nothing at `final`; a full disk is one clear StorageError.
    """
    final = Path(final)
    tmp = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if diskfull.is_disk_full(exc):
            raise diskfull.error(final.parent, final, diskfull.PIPELINE_ROOT) from exc
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
