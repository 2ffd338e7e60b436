"""The one door through which kfopt reads inputs and publishes outputs: local paths and gs:// URIs.

Every stage names its inputs and outputs by URI, so the same code runs on one machine and on a
cluster with artifacts in Google Cloud Storage. These promises hold:

- Writes are atomic: a reader sees the old content or the new, never half a file or half a folder.
  A local file goes to a temporary name in the same folder and is renamed; a local folder is built
  beside its destination and renamed; a gs:// object is one upload; a gs:// folder counts as there
  only once its `_COMPLETE` marker (the JSON manifest {relpath: sha256}) is written, last.
- Uploads are checked: the server's crc32c of every uploaded object must equal the local one.
- Failures are StorageErrors with one sentence naming the URI and what to do; no google-cloud
  exception escapes unwrapped. A full local disk says which one and what to point elsewhere.
- Transient gs:// failures (429/5xx, dropped connections, no answer within the timeout) are
  retried with exponential backoff for a bounded time (RetryPolicy), then reported once, naming
  the bucket and the object. Create-only writes (if_generation_match=0) are retried too: the
  precondition makes a repeat safe, and a repeat that finds our own bytes already there (the
  first try landed, its answer was lost) counts as success, not as a lost race.
- An interrupted upload is never visible: an object appears only once GCS has all of it (one
  request, or a resumable upload's final chunk); kfopt then compares its crc32c with ours.

google-cloud-storage is imported inside functions so that importing kfopt stays cheap.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from kfopt import diskfull
from kfopt.errors import StorageError
from kfopt.variant import sha256_file

COMPLETE_MARKER = "_COMPLETE"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


class PreconditionFailed(StorageError):
    """A conditional write lost: the object's generation was not the one the caller expected."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long one gs:// call may take: per request, and over all its retries together."""

    timeout_s: float = 60.0  # connecting, and each wait for the server's next bytes
    deadline_s: float = 120.0  # all tries of one call; then the call fails with one StorageError
    initial_s: float = 1.0  # first backoff; doubled after each failed try, at most maximum_s
    maximum_s: float = 30.0

    ENV = {"timeout_s": "KFOPT_GCS_TIMEOUT_S", "deadline_s": "KFOPT_GCS_RETRY_DEADLINE_S",
           "initial_s": "KFOPT_GCS_RETRY_INITIAL_S"}

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """The defaults, with any of KFOPT_GCS_TIMEOUT_S / _RETRY_DEADLINE_S / _RETRY_INITIAL_S applied."""
        values = {}
        for field, var in cls.ENV.items():
            raw = os.environ.get(var, "").strip()
            if not raw:
                continue
            try:
                values[field] = float(raw)
            except ValueError:
                values[field] = -1.0
            if not values[field] > 0:
                raise StorageError(f"{var}={raw!r} is not a positive number of seconds; set it to e.g. 30 or unset it")
        return cls(**values)

    def retry(self, conditional: bool = False):
        """google-cloud-storage's own retry predicate (429, 5xx, connection and timeout errors) with our timing.

        conditional: a write guarded by if_generation_match, retried because the precondition makes
        a repeat harmless (GCS's ConditionalRetryPolicy, as the library recommends).
        """
        from google.cloud.storage import retry as gcs_retry

        policy = gcs_retry.DEFAULT_RETRY.with_timeout(self.deadline_s).with_delay(
            initial=self.initial_s, maximum=self.maximum_s, multiplier=2.0)
        if conditional:
            return gcs_retry.ConditionalRetryPolicy(policy, gcs_retry.is_generation_specified, ["query_params"])
        return policy


def _opts(conditional: bool = False) -> dict[str, Any]:
    """retry= and timeout= for one google-cloud-storage call."""
    policy = RetryPolicy.from_env()
    return {"retry": policy.retry(conditional), "timeout": policy.timeout_s}


def is_gcs(uri: str | Path) -> bool:
    return str(uri).startswith("gs://")


def parse_gcs(uri: str) -> tuple[str, str]:
    """Split gs://bucket/path into (bucket, path); path is "" for the bucket itself."""
    if not is_gcs(uri):
        raise StorageError(f"{uri} is not a gs:// URI; write it as gs://BUCKET/PATH")
    bucket, _, path = str(uri)[len("gs://"):].partition("/")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise StorageError(
            f"{uri} has no valid bucket name; write it as gs://BUCKET/PATH with a bucket name of "
            "3-222 lowercase letters, digits, dots, dashes or underscores"
        )
    return bucket, path


@functools.lru_cache(maxsize=1)
def _client():
    """One client per process; anonymous against an emulator (STORAGE_EMULATOR_HOST), else ADC."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "kfopt-local")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


def reset_client() -> None:
    """Forget the cached client, e.g. after STORAGE_EMULATOR_HOST or credentials changed."""
    _client.cache_clear()


def _blob(uri: str):
    bucket, path = parse_gcs(uri)
    if not path or path.endswith("/"):
        raise StorageError(f"{uri} names a folder, not an object; add the object's name to the URI")
    return _client().bucket(bucket).blob(path)


def _missing(uri: str) -> StorageError:
    """Tell a missing bucket from a missing object; GCS answers 404 for both."""
    from google.api_core import exceptions as api

    bucket, _ = parse_gcs(uri)
    try:
        bucket_there = _client().lookup_bucket(bucket, **_opts()) is not None
    except api.GoogleAPIError:  # e.g. allowed to read objects but not bucket metadata
        bucket_there = True
    if not bucket_there:
        return StorageError(
            f"bucket '{bucket}' does not exist or you have no access; create it or check the URI {uri}"
        )
    return StorageError(f"no such object {uri}; check the URI or run the stage that writes it first")


@contextlib.contextmanager
def _gcs_errors(uri: str, action: str) -> Iterator[None]:
    """Turn google-cloud and transport exceptions into StorageErrors that say what to do."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    start = time.monotonic()
    try:
        yield
    except StorageError:
        raise
    except auth.DefaultCredentialsError as err:
        raise StorageError(
            f"no Google Cloud credentials to {action} {uri}; set GOOGLE_APPLICATION_CREDENTIALS to "
            "a service-account key file, run `gcloud auth application-default login`, or run the pod "
            "with a Workload Identity service account"
        ) from err
    except api.PreconditionFailed as err:
        raise PreconditionFailed(
            f"{uri} changed since its generation was read, so it was not overwritten; read it again "
            "and retry"
        ) from err
    except api.NotFound as err:
        raise _missing(uri) from err
    except api.Forbidden as err:
        raise StorageError(
            f"no permission to {action} {uri}; grant the service account a Storage role on the bucket"
        ) from err
    except api.RetryError as err:
        raise _unreachable(uri, action, err.cause, retried_s=time.monotonic() - start) from err
    except (requests.Timeout, requests.ConnectionError, auth.TransportError) as err:
        raise _unreachable(uri, action, err) from err
    except api.GoogleAPICallError as err:
        if err.code in (408, 429) or (err.code or 0) >= 500:  # the server's trouble, not the request's
            raise _unreachable(uri, action, err) from err
        raise StorageError(
            f"could not {action} {uri}: {_describe(err)}; check the URI and your access to the bucket"
        ) from err
    except api.GoogleAPIError as err:
        raise StorageError(
            f"could not {action} {uri}: {_describe(err)}; check the URI and your access to the bucket"
        ) from err
    except requests.RequestException as err:
        raise StorageError(
            f"could not {action} {uri}: {_describe(err)}; check the network and retry"
        ) from err
    except auth.GoogleAuthError as err:  # after TransportError, which is one too
        raise StorageError(
            f"Google Cloud rejected the credentials used to {action} {uri} ({err}); refresh or "
            "replace them"
        ) from err


def _describe(err: BaseException | None) -> str:
    """The last failure of a gs:// call in a few words."""
    import requests
    from google.api_core import exceptions as api

    if isinstance(err, requests.Timeout):
        return f"no answer within {RetryPolicy.from_env().timeout_s:g} s"
    if isinstance(err, requests.ConnectionError):
        return "the connection failed or was dropped"
    if isinstance(err, api.GoogleAPICallError) and err.code:
        return f"HTTP {err.code} {err.message}".strip()
    response = getattr(err, "response", None)  # google-resumable-media's InvalidResponse (uploads, downloads)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} {getattr(response, 'reason', '') or ''}".strip()
    return f"{type(err).__name__}: {err}"


def _unreachable(uri: str, action: str, last: BaseException | None, retried_s: float | None = None) -> StorageError:
    """The one error once a gs:// call failed for good: bucket, object, last failure, what to check."""
    bucket, path = parse_gcs(uri)
    waited = f"still failing after retrying for {retried_s:.1f} s, last: " if retried_s is not None else ""
    emulator = ", STORAGE_EMULATOR_HOST" if os.environ.get("STORAGE_EMULATOR_HOST") else ""
    return StorageError(
        f"could not {action} object '{path}' in bucket '{bucket}' ({uri}): {waited}{_describe(last)}; check "
        f"the network{emulator} and that the bucket is available, then rerun (KFOPT_GCS_RETRY_DEADLINE_S and "
        "KFOPT_GCS_TIMEOUT_S set how long kfopt waits)"
    )


@contextlib.contextmanager
def _local_errors(path: Path | str, writing: bool) -> Iterator[None]:
    """Turn OSErrors on local paths into StorageErrors that say what to do."""
    try:
        yield
    except StorageError:
        raise
    except (FileExistsError, NotADirectoryError) as err:
        if not writing:
            raise StorageError(f"no such file {path}; check the path") from err
        raise StorageError(
            f"cannot write {path}: part of that path is a file, not a folder; choose another location "
            "or remove that file"
        ) from err
    except FileNotFoundError as err:
        raise StorageError(
            f"no such file {path}; check the path or run the stage that produces it first"
        ) from err
    except IsADirectoryError as err:
        raise StorageError(f"{path} is a folder, not a file; name a file inside it") from err
    except PermissionError as err:
        verb = "write" if writing else "read"
        raise StorageError(
            f"no permission to {verb} {path}; fix its permissions or choose another location"
        ) from err
    except OSError as err:
        if writing and diskfull.is_disk_full(err):
            raise diskfull.error(path, path, diskfull.STORAGE) from err
        verb = "write" if writing else "read"
        raise StorageError(f"cannot {verb} {path}: {err.strerror}; check the disk and the path") from err


def _crc32c_b64(path: Path) -> str:
    """crc32c in GCS's encoding (base64 of the big-endian 4 bytes), to compare with blob.crc32c."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode("ascii")


def read_bytes(uri: str | Path) -> bytes:
    if is_gcs(uri):
        with _gcs_errors(str(uri), "read"):
            return _blob(str(uri)).download_as_bytes(**_opts())
    with _local_errors(uri, writing=False):
        return Path(uri).read_bytes()


def write_bytes(uri: str | Path, data: bytes, if_generation_match: int | None = None) -> None:
    """Write atomically. if_generation_match=0 means "only if it does not exist yet".

    On gs:// the generation is also checked here before uploading, because emulators ignore the
    precondition; the precondition still goes to the server, where real GCS enforces it atomically.
    Local files have no generations: only 0 is meaningful there (an exclusive hard link).
    """
    if is_gcs(uri):
        _write_gcs(str(uri), data, if_generation_match)
        return
    path = Path(uri)
    if if_generation_match not in (None, 0):
        raise StorageError(
            f"cannot write {path} if its generation is {if_generation_match}: local files have no "
            "generations; pass 0 (only if absent) or None"
        )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with _local_errors(path, writing=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_bytes(data)
            if if_generation_match == 0:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(
                        f"{path} already exists, so it was not overwritten; choose another name or "
                        "delete it first"
                    ) from None
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _write_gcs(uri: str, data: bytes, if_generation_match: int | None) -> None:
    """One request carrying the whole object (and its crc32c): GCS stores all of it or nothing."""
    import google_crc32c
    from google.api_core import exceptions as api

    expected = base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")
    with _gcs_errors(uri, "write"):
        if if_generation_match is not None and (get_generation(uri) or 0) != if_generation_match:
            raise PreconditionFailed(
                f"{uri} is not at generation {if_generation_match} (0 = absent), so it was not "
                "overwritten; read it again and retry"
            )
        blob = _blob(uri)
        try:
            blob.upload_from_string(data, if_generation_match=if_generation_match,
                                    **_opts(conditional=if_generation_match is not None))
        except api.PreconditionFailed:
            if if_generation_match != 0 or not _holds(uri, data, expected):
                raise
            blob.reload(**_opts())
        _check_uploaded(blob, expected, uri)


def _holds(uri: str, data: bytes, crc32c: str) -> bool:
    """Whether the object at `uri` already holds exactly `data` (an earlier try of ours landed).

    Create-only writes carry a unique token (registry claims), so equal bytes mean our own write.
    """
    bucket, path = parse_gcs(uri)
    blob = _client().bucket(bucket).get_blob(path, **_opts())
    if blob is None or blob.size != len(data) or blob.crc32c != crc32c:
        return False
    return blob.md5_hash in (None, base64.b64encode(hashlib.md5(data).digest()).decode("ascii"))


def _check_uploaded(blob, expected_crc32c: str, uri: str) -> None:
    if blob.crc32c != expected_crc32c:
        raise StorageError(
            f"{uri} was corrupted in transit (crc32c {blob.crc32c} on the server, {expected_crc32c} "
            "here); upload it again"
        )


def read_text(uri: str | Path) -> str:
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StorageError(f"{uri} is not UTF-8 text ({err}); point to a text file") from err


def write_text(uri: str | Path, text: str, if_generation_match: int | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), if_generation_match)


def read_json(uri: str | Path) -> Any:
    try:
        return json.loads(read_text(uri))
    except json.JSONDecodeError as err:
        raise StorageError(f"{uri} is not valid JSON ({err}); fix or regenerate it") from err


def write_json(uri: str | Path, value: Any, if_generation_match: int | None = None) -> None:
    write_text(uri, json.dumps(value, indent=2) + "\n", if_generation_match)


def exists(uri: str | Path) -> bool:
    """A local path, a gs:// object, or a gs:// prefix with at least one object (complete or not)."""
    if not is_gcs(uri):
        return Path(uri).exists()
    bucket, path = parse_gcs(str(uri))
    with _gcs_errors(str(uri), "look up"):
        if path and not path.endswith("/") and _client().bucket(bucket).blob(path).exists(**_opts()):
            return True
        prefix = path.rstrip("/") + "/" if path else ""
        return any(True for _ in _client().list_blobs(bucket, prefix=prefix, max_results=1, **_opts()))


def exists_complete(uri: str | Path) -> bool:
    """Whether a folder written by upload_dir is all there (gs://: its _COMPLETE marker exists)."""
    if not is_gcs(uri):
        return Path(uri).is_dir()
    return exists(_marker_uri(str(uri)))


def _marker_uri(uri: str) -> str:
    return f"{uri.rstrip('/')}/{COMPLETE_MARKER}"


def get_generation(uri: str | Path) -> int | None:
    """The object's generation, for a later conditional write; None locally or if absent."""
    if not is_gcs(uri):
        return None
    bucket, path = parse_gcs(str(uri))
    with _gcs_errors(str(uri), "look up"):
        blob = _client().bucket(bucket).get_blob(path, **_opts())
    return blob.generation if blob is not None else None


def list_dir(uri: str | Path) -> list[str]:
    """Sorted names of the immediate children of a folder (gs://: objects and sub-prefixes)."""
    if not is_gcs(uri):
        with _local_errors(uri, writing=False):
            return sorted(os.listdir(uri))
    bucket, path = parse_gcs(str(uri))
    prefix = path.rstrip("/") + "/" if path else ""
    with _gcs_errors(str(uri), "list"):
        pages = _client().list_blobs(bucket, prefix=prefix, delimiter="/", **_opts())
        names = [blob.name[len(prefix):] for blob in pages]
        names += [sub[len(prefix):].rstrip("/") for sub in pages.prefixes]
    if not names and prefix:
        raise StorageError(f"no such folder {uri}; check the URI or run the stage that writes it first")
    return sorted(name for name in names if name != COMPLETE_MARKER)


def fetch(uri: str | Path, local_dir: Path, require_complete: bool = True) -> Path:
    """A local path for reading `uri`: local paths as they are, gs:// objects and folders downloaded.

    A gs:// folder is downloaded file by file from its _COMPLETE manifest, each file's sha256
    checked, so a stale or half-written folder is never read. require_complete=False accepts a
    folder uploaded by other tools (no marker) and downloads everything under the prefix.
    """
    if not is_gcs(uri):
        path = Path(uri)
        if not path.exists():
            raise StorageError(
                f"no such file or folder {path}; check the path or run the stage that produces it first"
            )
        return path
    uri = str(uri)
    bucket, path = parse_gcs(uri)
    name = path.rstrip("/").rsplit("/", 1)[-1] or bucket
    dest = Path(local_dir) / name
    with _gcs_errors(uri, "download"):
        blob = _client().bucket(bucket).get_blob(path, **_opts()) if path and not path.endswith("/") else None
        if blob is None:
            _download_folder(uri, dest, require_complete)
            return dest
        tmp = dest.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            _download(blob, tmp)
            with _local_errors(dest, writing=True):
                os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _download(blob, target: Path) -> None:
    """Download into target, creating its folder; the client checks the crc32c on the way."""
    import requests

    with _local_errors(target, writing=True):
        target.parent.mkdir(parents=True, exist_ok=True)
    try:
        blob.download_to_filename(str(target), **_opts())
    except OSError as err:
        if diskfull.is_disk_full(err):
            raise diskfull.error(target.parent, f"{target.name} downloaded from {blob.name}", diskfull.DOWNLOADS) from err
        if isinstance(err, requests.RequestException):  # network, not disk: _gcs_errors words it
            raise
        with _local_errors(target, writing=True):
            raise


def _download_folder(uri: str, dest: Path, require_complete: bool) -> None:
    bucket, path = parse_gcs(uri)
    prefix = path.rstrip("/") + "/" if path else ""
    if exists(_marker_uri(uri)):
        manifest = read_json(_marker_uri(uri))
    elif require_complete:
        if exists(uri):
            raise StorageError(
                f"{uri} is incomplete (no {COMPLETE_MARKER} marker): its upload was interrupted or is "
                "still running; rerun the stage that writes it"
            )
        raise _missing(uri)
    else:
        names = [b.name for b in _client().list_blobs(bucket, prefix=prefix, **_opts()) if not b.name.endswith("/")]
        if not names:
            raise _missing(uri)
        manifest = {name[len(prefix):]: None for name in names}
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        for rel, sha in manifest.items():
            target = tmp / rel
            _download(_client().bucket(bucket).blob(prefix + rel), target)
            if sha is not None and sha256_file(target) != sha:
                raise StorageError(
                    f"{uri}/{rel} does not match the sha256 in its {COMPLETE_MARKER} manifest; "
                    "upload the folder again"
                )
        _swap_in(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, dest: Path) -> None:
    """Rename a finished folder into place; an older one is moved aside first, then removed."""
    with _local_errors(dest, writing=True):
        old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)


def _manifest(local_dir: Path) -> dict[str, str]:
    with _local_errors(local_dir, writing=False):
        if not local_dir.is_dir():
            raise StorageError(f"no such folder {local_dir}; check the path")
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        return {p.relative_to(local_dir).as_posix(): sha256_file(p) for p in files}


def upload_dir(local_dir: Path | str, uri: str | Path) -> dict[str, str]:
    """Publish a folder whole; returns its manifest {relpath: sha256}.

    Local: copied to a temporary sibling, then renamed into place. gs://: an existing marker is
    deleted first (the old folder is about to be overwritten), every file is uploaded and its
    crc32c checked, and the marker with the manifest is written last.
    """
    local_dir = Path(local_dir)
    manifest = _manifest(local_dir)
    if not is_gcs(uri):
        dest = Path(uri)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            with _local_errors(dest, writing=True):
                tmp.mkdir(parents=True)
            for rel in manifest:
                with _local_errors(dest / rel, writing=True):  # the name the user knows, not the temporary one
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(local_dir / rel, tmp / rel)
            _swap_in(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return manifest
    uri = str(uri).rstrip("/")
    bucket, path = parse_gcs(uri)
    with _gcs_errors(uri, "upload to"):
        marker = _blob(_marker_uri(uri))
        if marker.exists(**_opts()):
            marker.delete(**_opts())
        for rel in manifest:
            blob = _client().bucket(bucket).blob(f"{path}/{rel}" if path else rel)
            blob.upload_from_filename(str(local_dir / rel), **_opts())
            _check_uploaded(blob, _crc32c_b64(local_dir / rel), f"{uri}/{rel}")
    write_json(_marker_uri(uri), manifest)
    return manifest
