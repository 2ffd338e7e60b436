"""kfopt.storage when the GCS server misbehaves: real servers on 127.0.0.1 behind a fault-injecting proxy.

The servers are real GCS-protocol implementations (gcp-storage-emulator; fake-gcs-server where
generation preconditions must be enforced); tests/fault_proxy.py sits in front and answers 503,
drops connections mid-upload, loses answers or stalls on the requests a test names. Nothing in
kfopt or google-cloud-storage is patched: the retries, timeouts and error messages under test are
the ones a run on a cluster gets (with timings shortened through KFOPT_GCS_* variables).
"""

from gcs_emulator import FAST_RETRY, gcs, gcs_faults, gcs_strict  # noqa: F401 (fixtures)

import os
import threading
import time
import uuid

import pytest
from fault_proxy import FaultProxy
from google.api_core import exceptions as api
from publish_inputs import check_no_interleaving, concurrent_publish, run_outputs  # noqa: F401 (fixture)

from kfopt import registry, storage
from kfopt.errors import StorageError
from kfopt.registry import Registry

UPLOAD = r"^/upload/"


def _single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_503s_then_success_are_retried(gcs_faults):
    uri, data = gcs_faults.uri("runs/a/report.json"), b'{"acc": 0.9}' * 100
    gcs_faults.proxy.add("503", method="POST", path=UPLOAD, times=2)
    storage.write_bytes(uri, data)
    gcs_faults.proxy.add("503", method="GET", path=r"/o/runs%2Fa%2Freport\.json", times=2)
    assert storage.read_bytes(uri) == data
    faulted = gcs_faults.proxy.faults("503")
    assert [s.method for s in faulted] == ["POST", "POST", "GET", "GET"]


def test_a_random_share_of_failures_is_absorbed(gcs_faults, tmp_path):
    """A third of all requests fail (503 or dropped, seeded): a folder still goes up whole and comes back intact."""
    src = tmp_path / "variant"
    for i in range(6):
        (src / f"part{i}").parent.mkdir(parents=True, exist_ok=True)
        (src / f"part{i}").write_bytes(bytes([i]) * (1000 + i))
    gcs_faults.proxy.add("503", times=None, share=0.2)
    gcs_faults.proxy.add("drop", times=None, share=0.15)
    manifest = storage.upload_dir(src, gcs_faults.uri("models/v1"))
    back = storage.fetch(gcs_faults.uri("models/v1"), tmp_path / "back")
    assert {p.name: p.read_bytes() for p in back.iterdir()} == {p.name: p.read_bytes() for p in src.iterdir()}
    assert len(manifest) == 6 and gcs_faults.proxy.faults(), "the seeded share injected no fault at all"


def test_permanent_503_is_one_clear_error_naming_bucket_and_object(gcs_faults):
    gcs_faults.proxy.add("503", times=None)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        storage.write_bytes(gcs_faults.uri("registry/models/claim.json"), b"{}")
    waited = time.monotonic() - start
    message = _single_line(err)
    assert f"bucket '{gcs_faults.bucket}'" in message and "object 'registry/models/claim.json'" in message
    assert "HTTP 503" in message and "after retrying for" in message and "check the network" in message
    assert len(gcs_faults.proxy.faults("503")) >= 3, "gave up without retrying"
    assert waited < 3 + 1, "retried past KFOPT_GCS_RETRY_DEADLINE_S"
    with pytest.raises(StorageError, match=r"could not read object 'x\.npz' in bucket .*HTTP 503"):
        storage.read_bytes(gcs_faults.uri("x.npz"))


def test_connection_dropped_mid_upload_leaves_no_visible_object(gcs_faults):
    uri = gcs_faults.uri("data/train.npz")
    gcs_faults.proxy.add("drop", method="POST", path=UPLOAD, times=None)
    with pytest.raises(StorageError) as err:
        storage.write_bytes(uri, b"x" * 200_000)
    assert "connection failed or was dropped" in _single_line(err) and "data/train.npz" in str(err.value)
    assert len(gcs_faults.proxy.faults("drop")) >= 2
    gcs_faults.proxy.clear()
    assert not storage.exists(uri), "a half-sent upload became visible"
    assert storage.get_generation(uri) is None
    gcs_faults.proxy.add("drop", method="POST", path=UPLOAD, times=1)  # once: the retry completes it
    storage.write_bytes(uri, b"y" * 200_000)
    assert storage.read_bytes(uri) == b"y" * 200_000


def test_resumable_upload_cut_off_leaves_no_visible_object(gcs_faults, tmp_path):
    """Above 8 MiB the client uses a resumable upload; its data request is cut off every time."""
    src = tmp_path / "big"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    gcs_faults.proxy.add("drop", method="PUT", path=r"uploadType=resumable&upload_id=", times=None)
    with pytest.raises(StorageError, match="weights.bin|big"):
        storage.upload_dir(src, gcs_faults.uri("big"))
    assert gcs_faults.proxy.faults("drop"), "the resumable upload did not go through the proxy"
    gcs_faults.proxy.clear()
    assert not storage.exists(gcs_faults.uri("big/weights.bin")) and not storage.exists_complete(gcs_faults.uri("big"))


def test_folder_upload_interrupted_is_never_read_as_complete(gcs_faults, tmp_path):
    src = tmp_path / "v"
    src.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        (src / name).write_bytes(name.encode() * 5000)
    uri = gcs_faults.uri("optimized/v1")
    storage.upload_dir(src, uri)  # an earlier complete copy is being replaced
    # a.bin goes up, then every try of b.bin is cut off (files go up in sorted order, the marker last)
    gcs_faults.proxy.add("drop", method="POST", path=UPLOAD, after=1, times=None)
    with pytest.raises(StorageError, match="connection failed or was dropped"):
        storage.upload_dir(src, uri)
    gcs_faults.proxy.clear()
    assert not storage.exists_complete(uri)
    with pytest.raises(StorageError, match="incomplete"):
        storage.fetch(uri, tmp_path / "dl")


def test_stalled_server_is_a_timeout_error(gcs_faults):
    storage.write_bytes(gcs_faults.uri("m.json"), b"{}")
    gcs_faults.proxy.add("stall", method="GET", times=None)
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        storage.read_bytes(gcs_faults.uri("m.json"))
    assert "no answer within 0.5 s" in _single_line(err) and "object 'm.json'" in str(err.value)
    assert time.monotonic() - start < 15


def test_bad_retry_setting_is_one_clear_error(gcs, monkeypatch):
    monkeypatch.setenv("KFOPT_GCS_RETRY_DEADLINE_S", "soon")
    with pytest.raises(StorageError, match="KFOPT_GCS_RETRY_DEADLINE_S='soon' is not a positive number"):
        storage.read_bytes(gcs.uri("x"))


# --- preconditions, on a server that enforces them -------------------------------------------------


def test_strict_server_refuses_a_second_create(gcs_strict):
    """The server itself refuses (not kfopt's client-side check): the fixture is the server the tests need."""
    uri = gcs_strict.uri("claims/v1/claim.json")
    storage.write_json(uri, {"token": "a"}, if_generation_match=0)  # pragma: allowlist secret
    blob = storage._client().bucket(gcs_strict.bucket).blob("claims/v1/claim.json")
    with pytest.raises(api.PreconditionFailed):
        blob.upload_from_string(b'{"token": "b"}', if_generation_match=0)  # pragma: allowlist secret
    with pytest.raises(storage.PreconditionFailed, match="not overwritten"):
        storage.write_json(uri, {"token": "b"}, if_generation_match=0)  # pragma: allowlist secret
    assert storage.read_json(uri) == {"token": "a"}  # pragma: allowlist secret


def test_create_whose_answer_was_lost_is_still_ours(gcs_strict, monkeypatch):
    """The upload lands but its answer is lost; the retry gets 412, finds our bytes there: ours, not lost."""
    proxy = FaultProxy(gcs_strict.url).start()
    try:
        for var, value in FAST_RETRY.items():
            monkeypatch.setenv(var, value)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.reset_client()
        folder = gcs_strict.uri("claims/v7")
        proxy.add("lost_answer", method="POST", path=UPLOAD, times=1)
        assert registry.claim(folder, {"token": "mine"})  # pragma: allowlist secret
        assert proxy.faults("lost_answer") and registry.owner(folder)["token"] == "mine"  # pragma: allowlist secret
        assert not registry.claim(folder, {"token": "theirs"})  # pragma: allowlist secret
        assert registry.owner(folder)["token"] == "mine"  # pragma: allowlist secret
    finally:
        proxy.stop()


def test_simultaneous_claims_get_distinct_versions_on_a_strict_server(gcs_strict):
    reg, n = Registry(gcs_strict.uri("registry")), 8
    barrier, versions, errors = threading.Barrier(n), {}, []

    def one(i):
        barrier.wait()
        try:
            versions[i] = reg.claim_version("digits", {"token": uuid.uuid4().hex, "run_id": f"run-{i}"})
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert sorted(versions.values()) == list(range(1, n + 1))
    for i, v in versions.items():
        assert registry.owner(reg.version_dir("digits", v))["run_id"] == f"run-{i}"


def test_concurrent_publishers_never_clobber_each_other_on_a_strict_server(gcs_strict, run_outputs, tmp_path):
    reg = gcs_strict.uri("registry")
    check_no_interleaving(reg, concurrent_publish(run_outputs, tmp_path, reg, 3), 3)
