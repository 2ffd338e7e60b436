"""The model registry in object storage: where published models live and which run owns which number.

Layout under `<registry>/models/` (a local folder or a gs:// prefix):

    versions/<name>/v<N>/claim.json                    the run that owns version N (created once, never overwritten)
    versions/<name>/v<N>/publish.json                  its gate decisions; written last, so it marks N complete
    versions/<name>/v<N>/report.json                   the run's report
    trained_models/<name>/v<N>/                        the baseline variant
    optimized_models/<name>/v<N>/<variant>/            every verified variant
    deployment_models/<target>/<name>/v<N>/            the variant chosen for <target>: model_card.json,
                                                       blessing.json, model/, triton/ (see kfopt.triton)
    deployment_models/<target>/<name>/promotions/<K>/claim.json   promotion K: version N serves <target>

One version number is shared by the folders one run writes, so a deployment's lineage is the same N
under trained_models/ and optimized_models/. Promotions form a chain per target: promotion K+1 is
claimed only by a run that compared itself with promotion K, so two runs finishing at once cannot
both replace the same model, and the promoted version is the owner of the highest claimed K.

Claiming a number means creating `claim.json` where none exists: locally an exclusive hard link,
on gs:// an upload with ifGenerationMatch=0 that GCS enforces atomically. Servers that ignore that
precondition (the GCS emulator used in tests) but apply writes one at a time are covered by a
ledger written first: every claimant uploads `ledger/<token>` and only the one whose object got
the lowest generation (the first written) goes on to create claim.json. A claimant that won the
ledger and died before claim.json still owns the number (`owner` reads the ledger), so no number
is ever owned twice or left blocking the chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

from kfopt import storage
from kfopt.errors import ArtifactError, StorageError

CLAIM = "claim.json"
LEDGER = "ledger"
CARD = "model_card.json"
MAX_CLAIMS = 50
_VERSION = re.compile(r"v(\d+)")
_PROMOTION = re.compile(r"(\d+)")


@dataclasses.dataclass
class Promotion:
    """Promotion `number` of a name on a target: `record` says which version and card it put in service."""

    number: int
    record: dict[str, Any]
    folder: str  # the deployment folder of the promoted version

    @property
    def version(self) -> int:
        return int(self.record["version"])


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _children(uri: str) -> list[str]:
    return storage.list_dir(uri) if storage.exists(uri) else []


def _numbers(uri: str, pattern: re.Pattern) -> list[int]:
    return sorted(int(m.group(1)) for name in _children(uri) if (m := pattern.fullmatch(name)))


def _record(uri: str) -> dict[str, Any]:
    data = storage.read_bytes(uri)
    try:
        record = json.loads(data)
        if not isinstance(record, dict) or "token" not in record:
            raise ValueError("not a claim record")
    except ValueError as err:
        raise ArtifactError(f"{uri} is not a valid claim record ({err}); restore it from a backup or delete its "
                            "folder to fall back to the number before it.") from None
    return record


def _ledger_first(ledger: str) -> str | None:
    """Token of the ledger entry the server wrote first (lowest generation; ties broken by name)."""
    entries = [(gen, name) for name in _children(ledger)
               if (gen := storage.get_generation(_join(ledger, name))) is not None]
    return min(entries)[1] if entries else None


def claim(folder: str, record: dict[str, Any]) -> bool:
    """Create `folder`/claim.json with `record` (which holds a unique "token") unless someone has; True if ours."""
    if storage.is_gcs(folder):
        ledger = _join(folder, LEDGER)
        storage.write_json(_join(ledger, record["token"]), record, if_generation_match=0)
        if _ledger_first(ledger) != record["token"]:
            return False
    try:
        storage.write_json(_join(folder, CLAIM), record, if_generation_match=0)
    except storage.PreconditionFailed:
        return False
    return True


def owner(folder: str) -> dict[str, Any] | None:
    """The record of the claim on `folder`, or None if nobody claimed it."""
    if storage.exists(_join(folder, CLAIM)):
        return _record(_join(folder, CLAIM))
    if storage.is_gcs(folder):
        first = _ledger_first(_join(folder, LEDGER))
        if first is not None:
            return _record(_join(folder, LEDGER, first))
    return None


@dataclasses.dataclass
class Registry:
    uri: str

    @property
    def root(self) -> str:
        return _join(str(self.uri), "models")

    def version_dir(self, name: str, version: int) -> str:
        return _join(self.root, "versions", name, f"v{version}")

    def trained(self, name: str, version: int) -> str:
        return _join(self.root, "trained_models", name, f"v{version}")

    def optimized(self, name: str, version: int) -> str:
        return _join(self.root, "optimized_models", name, f"v{version}")

    def deployment(self, target: str, name: str, version: int) -> str:
        return _join(self.root, "deployment_models", target, name, f"v{version}")

    def _promotions(self, target: str, name: str) -> str:
        return _join(self.root, "deployment_models", target, name, "promotions")

    # --- writing -------------------------------------------------------------------------------

    def claim_version(self, name: str, record: dict[str, Any]) -> int:
        """Claim the next free version number of `name` for this run; the claim records `record`."""
        version = max(self.versions(name, complete=False), default=0) + 1
        for _ in range(MAX_CLAIMS):
            if claim(self.version_dir(name, version), {**record, "version": version}):
                return version
            version += 1
        raise StorageError(f"could not claim a version of {name!r} in {self.uri} after {MAX_CLAIMS} tries because "
                           "other runs kept taking them; retry once they have finished.")

    def claim_promotion(self, target: str, name: str, number: int, record: dict[str, Any]) -> bool:
        """Claim promotion `number` (the one after the promotion the caller compared with)."""
        return claim(_join(self._promotions(target, name), f"{number:06d}"), {**record, "promotion": number})

    # --- reading -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return _children(_join(self.root, "versions"))

    def versions(self, name: str, complete: bool = True) -> list[int]:
        """Version numbers of `name`; complete=True keeps those whose run finished publishing."""
        base = _join(self.root, "versions", name)
        numbers = _numbers(base, _VERSION)
        if not complete:
            return numbers
        return [n for n in numbers if storage.exists(_join(self.version_dir(name, n), "publish.json"))]

    def targets(self) -> list[str]:
        return _children(_join(self.root, "deployment_models"))

    def promoted(self, target: str, name: str) -> Promotion | None:
        """The promotion now in service for `name` on `target`, or None if nothing was promoted yet."""
        base = self._promotions(target, name)
        for number in reversed(_numbers(base, _PROMOTION)):
            record = owner(_join(base, f"{number:06d}"))
            if record is not None:
                return Promotion(number, record, self.deployment(target, name, int(record["version"])))
        return None

    def card(self, promotion: Promotion) -> dict[str, Any]:
        """The promoted model card, checked against the sha256 recorded when it was promoted."""
        uri = _join(promotion.folder, CARD)
        fallback = (f"restore it from a backup, or delete {self._promotion_folder(promotion)} to fall back to the "
                    "promotion before it")
        if not storage.exists(uri):
            raise ArtifactError(f"the promoted model card {uri} is missing; {fallback}.")
        data = storage.read_bytes(uri)
        try:
            card = json.loads(data)
        except ValueError as err:
            raise ArtifactError(f"the promoted model card {uri} is not valid JSON ({err}); {fallback}.") from None
        expected = promotion.record.get("card_sha256")
        if sha256(data) != expected:
            raise ArtifactError(f"the promoted model card {uri} does not match the sha256 recorded at promotion "
                                f"{promotion.number} ({sha256(data)[:12]}… instead of {str(expected)[:12]}…), "
                                f"so it was changed or corrupted; {fallback}.")
        return card

    def version_card(self, target: str, name: str, version: int) -> dict[str, Any] | None:
        """The model card of one version on one target (checked if that version was ever promoted)."""
        folder = self.deployment(target, name, version)
        if not storage.exists(_join(folder, CARD)):
            return None
        base = self._promotions(target, name)
        for number in _numbers(base, _PROMOTION):
            record = owner(_join(base, f"{number:06d}"))
            if record is not None and int(record["version"]) == version:
                return self.card(Promotion(number, record, folder))
        try:
            return json.loads(storage.read_bytes(_join(folder, CARD)))
        except ValueError as err:
            raise ArtifactError(f"the model card {_join(folder, CARD)} is not valid JSON ({err}); "
                                "restore it from a backup.") from None

    def _promotion_folder(self, promotion: Promotion) -> str:
        target, name = promotion.folder.rstrip("/").split("/")[-3:-1]
        return _join(self._promotions(target, name), f"{promotion.number:06d}")
