"""kfopt.storage against local tmp paths and a real GCS-protocol server (gcp-storage-emulator)."""

from gcs_emulator import gcs  # noqa: F401

import hashlib
import json
import os
from pathlib import Path

import pytest
from google.api_core import exceptions as api
from google.cloud.storage import Blob

from kfopt import storage
from kfopt.errors import StorageError


def _make_folder(root: Path) -> dict[str, bytes]:
    files = {
        "saved_model.pb": b"graph" * 100,
        "variables/variables.index": b"idx",
        "variables/data": os.urandom(3000),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _fail_on_call(monkeypatch, owner, name, call_number, error):
    """Make owner.name raise `error` on its call_number-th call, as a network or disk failure would."""
    original = getattr(owner, name)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_number:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)


# --- URIs ---------------------------------------------------------------------------------------


def test_parse_gcs_splits_bucket_and_path():
    assert storage.parse_gcs("gs://my-bucket/a/b.npz") == ("my-bucket", "a/b.npz")
    assert storage.parse_gcs("gs://my-bucket") == ("my-bucket", "")
    assert storage.is_gcs("gs://b/x") and not storage.is_gcs("/tmp/x")


@pytest.mark.parametrize("uri", ["gs://", "gs:///obj", "gs://Bad_Bucket!/x", "/local/path"])
def test_parse_gcs_rejects_malformed_uri(uri):
    with pytest.raises(StorageError, match="gs://BUCKET/PATH"):
        storage.parse_gcs(uri)


def test_importing_storage_does_not_import_google_cloud():
    import subprocess
    import sys

    code = "import sys, kfopt.storage; print('google.cloud.storage' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- local --------------------------------------------------------------------------------------


def test_local_round_trips(tmp_path):
    storage.write_bytes(tmp_path / "new/dir/a.bin", b"\x00\x01")
    storage.write_json(str(tmp_path / "m.json"), {"acc": 0.9})
    storage.write_text(tmp_path / "t.txt", "héllo")
    assert storage.read_bytes(tmp_path / "new/dir/a.bin") == b"\x00\x01"
    assert storage.read_json(tmp_path / "m.json") == {"acc": 0.9}
    assert storage.read_text(tmp_path / "t.txt") == "héllo"
    assert sorted(os.listdir(tmp_path)) == ["m.json", "new", "t.txt"]  # no temp files left
    assert storage.list_dir(tmp_path) == ["m.json", "new", "t.txt"]
    assert storage.get_generation(tmp_path / "m.json") is None


def test_local_overwrite_replaces_content(tmp_path):
    storage.write_text(tmp_path / "a", "old")
    storage.write_text(tmp_path / "a", "new")
    assert storage.read_text(tmp_path / "a") == "new"


def test_local_create_only_write(tmp_path):
    storage.write_text(tmp_path / "a", "first", if_generation_match=0)
    with pytest.raises(storage.PreconditionFailed, match="already exists"):
        storage.write_text(tmp_path / "a", "second", if_generation_match=0)
    assert storage.read_text(tmp_path / "a") == "first"
    assert os.listdir(tmp_path) == ["a"]


def test_local_missing_file(tmp_path):
    with pytest.raises(StorageError, match="no such file .*run the stage"):
        storage.read_bytes(tmp_path / "nope.npz")
    with pytest.raises(StorageError, match="no such file or folder"):
        storage.fetch(tmp_path / "nope.npz", tmp_path)


def test_local_fetch_returns_path_as_is(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"x")
    assert storage.fetch(str(tmp_path / "x.npz"), tmp_path / "other") == tmp_path / "x.npz"


def test_local_unwritable_path(tmp_path):
    (tmp_path / "file").write_text("I am a file")
    with pytest.raises(StorageError, match="part of that path is a file"):
        storage.write_bytes(tmp_path / "file" / "out.bin", b"x")
    with pytest.raises(StorageError, match="part of that path is a file"):
        storage.upload_dir(_folder(tmp_path), tmp_path / "file" / "model")


def test_local_folder_read_as_file(tmp_path):
    with pytest.raises(StorageError, match="is a folder, not a file"):
        storage.read_bytes(tmp_path)


def test_local_invalid_json(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        storage.read_json(tmp_path / "bad.json")


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _make_folder(src)
    return src


def test_local_upload_dir_copies_and_returns_checksums(tmp_path):
    src = tmp_path / "src"
    files = _make_folder(src)
    manifest = storage.upload_dir(src, tmp_path / "out" / "model")
    assert manifest == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    for rel, data in files.items():
        assert (tmp_path / "out/model" / rel).read_bytes() == data
    assert storage.exists_complete(tmp_path / "out" / "model")
    assert os.listdir(tmp_path / "out") == ["model"]


def test_local_upload_dir_replaces_older_folder(tmp_path):
    dest = tmp_path / "model"
    (dest / "stale.bin").parent.mkdir()
    (dest / "stale.bin").write_bytes(b"old")
    storage.upload_dir(_folder(tmp_path), dest)
    assert "stale.bin" not in os.listdir(dest)
    assert sorted(os.listdir(tmp_path)) == ["model", "src"]  # the old folder's aside copy is gone


def test_local_upload_dir_failure_leaves_nothing_visible(tmp_path, monkeypatch):
    src = _folder(tmp_path)
    _fail_on_call(monkeypatch, storage.shutil, "copy2", 2, OSError(28, "No space left on device"))
    with pytest.raises(StorageError, match="No space left"):
        storage.upload_dir(src, tmp_path / "model")
    assert sorted(os.listdir(tmp_path)) == ["src"]  # neither the folder nor its temp sibling


# --- gcs ----------------------------------------------------------------------------------------


def test_gcs_round_trips(gcs):
    storage.write_bytes(gcs.uri("a/b.bin"), b"\x00" * 10)
    storage.write_json(gcs.uri("a/m.json"), {"acc": 0.5})
    storage.write_text(gcs.uri("t.txt"), "héllo")
    assert storage.read_bytes(gcs.uri("a/b.bin")) == b"\x00" * 10
    assert storage.read_json(gcs.uri("a/m.json")) == {"acc": 0.5}
    assert storage.read_text(gcs.uri("t.txt")) == "héllo"
    assert storage.exists(gcs.uri("a/b.bin")) and storage.exists(gcs.uri("a"))
    assert not storage.exists(gcs.uri("a/zzz"))
    assert storage.list_dir(gcs.uri("a")) == ["b.bin", "m.json"]
    assert storage.list_dir(gcs.uri()) == ["a", "t.txt"]
    assert isinstance(storage.get_generation(gcs.uri("t.txt")), int)
    assert storage.get_generation(gcs.uri("absent")) is None


def test_gcs_fetch_object(gcs, tmp_path):
    storage.write_bytes(gcs.uri("data/train.npz"), b"npz-bytes")
    path = storage.fetch(gcs.uri("data/train.npz"), tmp_path / "cache")
    assert path == tmp_path / "cache" / "train.npz"
    assert path.read_bytes() == b"npz-bytes"
    assert os.listdir(tmp_path / "cache") == ["train.npz"]


def test_gcs_upload_dir_and_fetch_folder(gcs, tmp_path):
    src = tmp_path / "src"
    files = _make_folder(src)
    manifest = storage.upload_dir(src, gcs.uri("models/resnet/"))
    assert manifest == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    assert json.loads(storage.read_bytes(gcs.uri("models/resnet/_COMPLETE"))) == manifest
    assert storage.exists_complete(gcs.uri("models/resnet"))
    assert storage.list_dir(gcs.uri("models/resnet")) == ["saved_model.pb", "variables"]

    local = storage.fetch(gcs.uri("models/resnet"), tmp_path / "cache")
    assert local == tmp_path / "cache" / "resnet"
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert got == files  # the marker is not part of the folder


def test_gcs_upload_dir_large_file_uses_resumable_upload(gcs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(9 * 1024 * 1024)  # above the client's 8 MiB multipart limit
    (src / "weights.bin").write_bytes(big)
    storage.upload_dir(src, gcs.uri("big"))
    assert storage.fetch(gcs.uri("big"), tmp_path / "cache").joinpath("weights.bin").read_bytes() == big


def test_gcs_fetch_reads_only_files_in_manifest(gcs, tmp_path):
    storage.write_bytes(gcs.uri("m/stale.bin"), b"left over from an older upload")
    storage.upload_dir(_folder(tmp_path), gcs.uri("m"))
    local = storage.fetch(gcs.uri("m"), tmp_path / "cache")
    assert not (local / "stale.bin").exists()
    assert (local / "saved_model.pb").exists()


def test_gcs_fetch_detects_file_not_matching_manifest(gcs, tmp_path):
    storage.upload_dir(_folder(tmp_path), gcs.uri("m"))
    storage.write_bytes(gcs.uri("m/variables/variables.index"), b"swapped")
    with pytest.raises(StorageError, match="does not match the sha256"):
        storage.fetch(gcs.uri("m"), tmp_path / "cache")
    assert not (tmp_path / "cache" / "m").exists()


def test_gcs_upload_dir_failure_leaves_no_marker(gcs, tmp_path, monkeypatch):
    src = _folder(tmp_path)
    storage.upload_dir(src, gcs.uri("m"))  # an earlier complete upload is being replaced
    _fail_on_call(monkeypatch, Blob, "upload_from_filename", 2, api.ServiceUnavailable("backend down"))
    with pytest.raises(StorageError, match="could not upload to .*HTTP 503 backend down"):
        storage.upload_dir(src, gcs.uri("m"))
    assert storage.exists(gcs.uri("m"))  # some objects made it ...
    assert not storage.exists_complete(gcs.uri("m"))  # ... but readers do not see a folder
    with pytest.raises(StorageError, match="incomplete"):
        storage.fetch(gcs.uri("m"), tmp_path / "cache")


def test_gcs_fetch_folder_without_marker_when_allowed(gcs, tmp_path):
    storage.write_bytes(gcs.uri("byhand/saved_model.pb"), b"pb")
    storage.write_bytes(gcs.uri("byhand/variables/v.data"), b"v")
    local = storage.fetch(gcs.uri("byhand"), tmp_path, require_complete=False)
    assert (local / "saved_model.pb").read_bytes() == b"pb"
    assert (local / "variables" / "v.data").read_bytes() == b"v"


def test_gcs_upload_detects_corruption_in_transit(gcs, monkeypatch):
    """The server's crc32c is compared with the local one; simulate a server that stored other bytes."""
    original = Blob.upload_from_string
    monkeypatch.setattr(
        Blob, "upload_from_string", lambda self, data, **kw: original(self, data + b"!", **kw)
    )
    with pytest.raises(StorageError, match="corrupted in transit"):
        storage.write_bytes(gcs.uri("x.bin"), b"payload")


def test_gcs_missing_bucket(gcs):
    missing = "gs://kfopt-no-such-bucket-123/x.npz"
    with pytest.raises(StorageError, match="bucket 'kfopt-no-such-bucket-123' does not exist"):
        storage.read_bytes(missing)
    with pytest.raises(StorageError, match="does not exist"):
        storage.write_bytes(missing, b"x")
    with pytest.raises(StorageError, match="does not exist"):
        storage.list_dir("gs://kfopt-no-such-bucket-123/folder")


def test_gcs_missing_object(gcs, tmp_path):
    with pytest.raises(StorageError, match="no such object gs://.*/nope.npz"):
        storage.read_bytes(gcs.uri("nope.npz"))
    with pytest.raises(StorageError, match="no such object"):
        storage.fetch(gcs.uri("nope.npz"), tmp_path)
    with pytest.raises(StorageError, match="no such folder"):
        storage.list_dir(gcs.uri("nope"))


def test_gcs_precondition(gcs):
    uri = gcs.uri("registry/latest.json")
    storage.write_json(uri, {"v": 1}, if_generation_match=0)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_json(uri, {"v": "other writer"}, if_generation_match=0)
    generation = storage.get_generation(uri)
    storage.write_json(uri, {"v": 2}, if_generation_match=generation)
    with pytest.raises(storage.PreconditionFailed, match="not at generation"):
        storage.write_json(uri, {"v": 3}, if_generation_match=generation)  # stale generation
    assert storage.read_json(uri) == {"v": 2}


def test_gcs_server_side_precondition_failure_is_wrapped(gcs, monkeypatch):
    """Real GCS may reject the upload after the client-side check passed (a concurrent writer)."""
    def concurrent_writer_won(self, data, **kwargs):
        assert kwargs["if_generation_match"] == 0  # the precondition still goes to the server
        raise api.PreconditionFailed("412 conditionNotMet")

    monkeypatch.setattr(Blob, "upload_from_string", concurrent_writer_won)
    with pytest.raises(storage.PreconditionFailed, match="changed since"):
        storage.write_bytes(gcs.uri("x"), b"x", if_generation_match=0)


def test_no_credentials_is_explained(monkeypatch):
    from google.auth import exceptions as auth

    def no_credentials(*args, **kwargs):
        raise auth.DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr("google.auth.default", no_credentials)
    storage.reset_client()
    try:
        with pytest.raises(StorageError, match="GOOGLE_APPLICATION_CREDENTIALS.*Workload Identity"):
            storage.read_bytes("gs://some-bucket/x")
    finally:
        storage.reset_client()


def test_local_upload_dir_of_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert storage.upload_dir(tmp_path / "empty", tmp_path / "new" / "out") == {}
    assert storage.list_dir(tmp_path / "new" / "out") == []
