"""The publish stage: put a run's models into the model registry, and each target's choice behind a gate.

Recurring retraining must never silently ship a worse model. Every run is published as a new
version (baseline under trained_models/, verified variants under optimized_models/; layout in
kfopt.registry), but a target's deployment changes only if the variant the report chose for it
passes the regression gate against the model promoted last for the same name and target:

- accuracy may not be lower than the promoted model's by more than `accuracy_tolerance_pp`;
- p50 latency at the target's objective batch size (batch 1 for the size objective) may not be
  higher by more than `latency_tolerance` (relative), compared only when both were measured on
  the same environment (kfopt.fingerprint.key); otherwise the card says latency was not compared;
- a promoted model card that is missing, not valid JSON or not matching the sha256 recorded at its
  promotion refuses the promotion (the old model stays, the reason says how to repair): a gate
  that cannot read what it compares with must not pass.

Two runs are never gated against each other when they are not the same thing:

- a name holds one architecture: if the promoted model's interface (input shape and dtype, output
  width) differs from this run's, nothing is published and the reason says to use another name;
- a rerun whose chosen variant is byte-identical (the sha256 of every file, kfopt.json `files`) to
  the promoted one is "already promoted as vN": no new promotion, and no new version at all when
  that holds for every target that has a choice.

A brought model (technique "provided") is published under the user's `model_name`, else under its
own file/folder name (`name_from_uri`), never under a config's name (`resolve_name`).

The outcome per target is a blessing (TFX's idea) that later steps read: {target, variant, blessed,
decision, reasons, metrics, ...}. A promoted variant gets a deployment folder with a model card
(metrics, budget, environment, lineage, gate), its files and, for cpu and gpu, a Triton model
repository (kfopt.triton). Publishing needs no TensorFlow: it reads JSON and copies files.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from kfopt import __version__, fingerprint, select, storage, triton, variant
from kfopt.errors import ArtifactError, ConfigError, KfoptError, StorageError
from kfopt.registry import CARD, Promotion, Registry, sha256

PUBLISH_JSON = "publish.json"
BLESSINGS = "blessings"
TRITON_TARGETS = ("cpu", "gpu")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MODEL_SUFFIXES = (".keras", ".h5", ".onnx", ".pt", ".pt2", ".pth", ".pb", ".tflite", ".savedmodel")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def default_registry(artifact_uri: str) -> str:
    """The registry of a cluster run that names none: `registry` in the bucket of its pipeline root."""
    if not artifact_uri.startswith("gs://"):
        return ""
    return "/".join(artifact_uri.split("/")[:3]) + "/registry"


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"Model name {name!r} cannot name a registry folder; use letters, digits, '.', '_' or '-' "
                          "(publish.model_name).")


def name_from_uri(uri: str) -> str:
    """A registry name from a model's file or folder name: `gs://b/models/Mobile Net.keras` → `Mobile-Net`.

    A trailing version folder (TF Serving's `<model>/1/`) names nothing, so its parent's name is used;
    characters check_name refuses become '-'.
    """
    parts = [p for p in re.split(r"[/\\]+", str(uri)) if p and not p.endswith(":")]
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    last = parts[-1] if parts else ""
    for suffix in _MODEL_SUFFIXES:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-._")[:128].rstrip("-._")
    return name or "model"


def resolve_name(name: str, baseline_params: dict[str, Any]) -> str:
    """The registry name: `name` if set, else a brought model's own (its file/folder), else the architecture's.

    `baseline_params` are the baseline variant's kfopt.json params; an empty pipeline parameter
    model_name (a Kubeflow UI run that sets only model_uri) is resolved here, in the stage.
    """
    if name:
        return name
    if baseline_params.get("model_uri"):
        return name_from_uri(baseline_params["model_uri"])
    return str(baseline_params.get("architecture") or "model")


def interface(meta: variant.VariantMeta) -> dict[str, Any]:
    """What a model takes and gives, to tell architectures apart: input shape (no batch) and dtype, output width."""
    return {"input_shape": list(meta.input.shape[1:]), "input_dtype": meta.input.dtype,
            "output_width": meta.output.shape[-1] if meta.output.shape else None}


def _card_interface(card: dict[str, Any]) -> dict[str, Any]:
    """A card's model interface; older cards have none, so their variant's shapes stand in (dtype unknown)."""
    if card.get("interface"):
        return card["interface"]
    spec = card["variant"]
    return {"input_shape": list(spec["input"]["shape"][1:]), "input_dtype": None,
            "output_width": (spec["output"]["shape"] or [None])[-1]}


def _mismatch(mine: dict[str, Any], card: dict[str, Any]) -> str | None:
    """Why `card` (a promoted model) is another architecture than a model with interface `mine`, or None."""
    theirs = _card_interface(card)
    same_dtype = theirs.get("input_dtype") in (None, mine["input_dtype"])
    if theirs["input_shape"] == mine["input_shape"] and same_dtype and theirs["output_width"] == mine["output_width"]:
        return None

    def shown(i: dict[str, Any]) -> str:
        dtype = f" {i['input_dtype']}" if i.get("input_dtype") else ""
        return f"input {tuple(i['input_shape'])}{dtype} and {i['output_width']} outputs"

    return (f"{card['name']} v{card['version']} (promoted for {card['target']}) is another architecture: "
            f"{shown(theirs)}, this model {shown(mine)}; the gate compares a model only with the same "
            "architecture. Publish this model under another name (publish.model_name, pipeline parameter "
            "model_name; empty: the model file's own name)")


def _same_files(meta: variant.VariantMeta, card: dict[str, Any]) -> bool:
    return bool(meta.files) and meta.files == card["variant"].get("files")


def _promoted_card(reg: Registry, target: str, name: str) -> tuple[Promotion | None, dict[str, Any] | None]:
    """The promotion on `target` and its card; (promotion, None) when it cannot be read (the gate reports it)."""
    try:
        previous = reg.promoted(target, name)
        return previous, (reg.card(previous) if previous else None)
    except ArtifactError:
        return None, None


def _index(variant_roots: list[Path]) -> dict[str, Path]:
    """Variant name → folder, over every variant set handed to the stage (the first one of a name wins)."""
    found: dict[str, Path] = {}
    for root in variant_roots:
        for folder in variant.discover(Path(root)):
            found.setdefault(variant.read(folder, verify=False).name, folder)
    return found


def _variant_dir(variants: dict[str, Path], name: str) -> Path:
    if name not in variants:
        raise ArtifactError(f"Variant {name!r} named in the report is not in any variant folder given to publish; "
                            "pass every variant set the benchmark measured.")
    return variants[name]


def _row(rows: list[dict[str, Any]], name: str, hardware: str) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name and r.get("hardware") == hardware)


def _gate_batch(card: dict[str, Any]) -> str:
    """The batch size whose latency the gate compares: the objective's, or the smallest measured."""
    _, batch = select.parse_objective(card["objective"])
    measured = sorted(int(b) for b in card["metrics"]["latency"])
    return str(batch if batch is not None else (measured[0] if measured else 1))


def _env(fp: dict[str, Any]) -> str:
    return f"{fp.get('cpu')}, {fp.get('cores')} cores, accelerator {fp.get('accelerator')}"


def gate(candidate: dict[str, Any], previous: dict[str, Any] | None, *, accuracy_tolerance_pp: float,
         latency_tolerance: float) -> tuple[bool, list[str], bool | None]:
    """Compare two model cards → (blessed, reasons, latency_compared). No previous card: first promotion.

    Accuracy may not drop beyond its tolerance; the target's objective may not get worse beyond
    `latency_tolerance` (relative): p50 latency on the same environment fingerprint, or the gzipped
    size when the objective is size (edge).
    """
    if previous is None:
        return True, ["first promotion of this model on this target"], None
    pv = f"v{previous['version']}"
    ok, reasons = True, []
    acc, prev_acc = candidate["metrics"]["accuracy"], previous["metrics"]["accuracy"]
    change_pp = (acc - prev_acc) * 100
    if -change_pp > accuracy_tolerance_pp + 1e-9:
        ok = False
        reasons.append(f"accuracy {acc:.4f} is {-change_pp:.2f} pp below {pv}'s {prev_acc:.4f} "
                       f"(tolerance {accuracy_tolerance_pp:g} pp)")
    else:
        reasons.append(f"accuracy {acc:.4f} vs {pv}'s {prev_acc:.4f} ({change_pp:+.2f} pp)")
    if select.parse_objective(candidate["objective"])[0] == "size":
        # A size objective (edge) is gated on size: it does not depend on where it was measured.
        size, prev_size = candidate["metrics"].get("size_gzip_bytes"), previous["metrics"].get("size_gzip_bytes")
        if size is None or prev_size is None:
            reasons.append(f"size not compared: {'this run' if size is None else pv} has no gzipped size")
            return ok, reasons, False
        size_ok, reason = _no_worse("gzipped size", size / 1024, prev_size / 1024, pv, latency_tolerance,
                                    "{:.1f} KiB", "")
        return ok and size_ok, reasons + [reason], False
    batch = _gate_batch(candidate)
    fp, prev_fp = candidate["environment"]["fingerprint"], previous["environment"]["fingerprint"]
    lat = candidate["metrics"]["latency"].get(batch, {}).get("p50_ms")
    prev_lat = previous["metrics"]["latency"].get(batch, {}).get("p50_ms")
    if fingerprint.key(fp) != fingerprint.key(prev_fp):
        reasons.append(f"latency not compared: {pv} was measured on another environment ({_env(prev_fp)}; this run: "
                       f"{_env(fp)})")
        return ok, reasons, False
    if lat is None or prev_lat is None:
        reasons.append(f"latency not compared: {'this run' if lat is None else pv} has no p50 at batch {batch}")
        return ok, reasons, False
    lat_ok, reason = _no_worse(f"p50 at batch {batch}", lat, prev_lat, pv, latency_tolerance, "{:.4f} ms",
                               "same environment")
    return ok and lat_ok, reasons + [reason], True


def _no_worse(what: str, value: float, prev: float, pv: str, tolerance: float, fmt: str, note: str) -> tuple[bool, str]:
    """Lower is better: fail when `value` is more than `tolerance` (relative) above `prev`."""
    change = value / prev - 1 if prev > 0 else 0.0
    shown, prev_shown, extra = fmt.format(value), fmt.format(prev), f", {note}" if note else ""
    if change > tolerance + 1e-9:
        return False, f"{what} {shown} is {change:.0%} above {pv}'s {prev_shown} (tolerance {tolerance:.0%}{extra})"
    return True, f"{what} {shown} vs {pv}'s {prev_shown} ({change:+.0%}{extra})"


def _no_triton(target: str, fmt: str) -> str:
    if target not in TRITON_TARGETS:
        return f"no Triton repository: {target} models are served from model/ ({fmt}), not by Triton"
    return (f"no Triton repository: {fmt} has no standard Triton backend and no variant Triton serves passed "
            f"for {target}")


class _Run:
    """One publication: the inputs every target's promotion needs, gathered once."""

    def __init__(self, report: dict[str, Any], variants: dict[str, Path], reg: Registry, name: str,
                 version: int | None, run_id: str, dataset: dict[str, Any] | None, tolerances: dict[str, float],
                 model: dict[str, Any]):
        self.report, self.variants, self.reg, self.name, self.version = report, variants, reg, name, version
        self.run_id, self.dataset, self.tolerances, self.model = run_id, dataset, tolerances, model

    def card(self, target: str, choice: dict[str, Any], row: dict[str, Any], meta: variant.VariantMeta,
             previous: Promotion | None) -> dict[str, Any]:
        hardware = row["hardware"]
        fp = self.report["environments"].get(hardware, {})
        baseline = self.report["baseline"]["name"]
        home = (self.reg.trained(self.name, self.version) if meta.name == baseline
                else f"{self.reg.optimized(self.name, self.version)}/{meta.name}")
        ver, spec = row["verification"], meta.to_dict()
        return {
            "schema": "kfopt.model_card/1", "name": self.name, "version": self.version, "target": target,
            "created": _now(), "run_id": self.run_id, "objective": choice["objective"], "interface": self.model,
            "selection": {k: choice[k] for k in ("reason", "runner_up", "runner_up_reason", "threads", "batch", "cores")
                          if choice.get(k) is not None},  # threads and batch: what the choice's figures assume
            "variant": {k: spec[k] for k in ("name", "format", "precision", "framework", "runtime", "technique", "params",
                                             "parent", "task", "input", "output", "files")},
            "metrics": {"accuracy": row["accuracy"], "accuracy_delta_pp": ver["accuracy_delta_pp"],
                        "agreement": ver["agreement"], "max_abs_error": ver["max_abs_error"],
                        "latency": row["latency"], "size_bytes": row.get("size_bytes"),
                        "size_gzip_bytes": row.get("size_gzip_bytes"), "peak_rss_mb": row.get("peak_rss_mb")},
            "budget": self.report["budget"],
            "environment": {"hardware": hardware, "fingerprint": fp, "key": list(fingerprint.key(fp))},
            "lineage": {"baseline": {"name": baseline, "accuracy": self.report["baseline"]["accuracy"],
                                     "uri": self.reg.trained(self.name, self.version)},
                        "variant_uri": home, "parent": meta.parent, "technique": meta.technique,
                        "report": f"{self.reg.version_dir(self.name, self.version)}/report.json",
                        "report_created": self.report.get("created"), "dataset": self.dataset,
                        "kfopt_version": __version__},
            "gate": {"previous": None if previous is None else {
                "version": previous.version, "promotion": previous.number, "variant": previous.record.get("variant")},
                "tolerances": self.tolerances},
        }

    def triton_row(self, target: str, choice: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any] | None:
        """What goes into the Triton repository: the choice if Triton serves its format, else the best that it can."""
        if target not in TRITON_TARGETS:
            return None
        if triton.servable(chosen["format"]):
            return chosen
        rows = [r for r in self.report["rows"] if triton.servable(r["format"])]
        alt = select.choose(rows, [target], {target: choice["objective"]})[target]
        return _row(rows, alt["chosen"], alt["hardware"]) if alt["chosen"] else None

    def deploy(self, target: str, card: dict[str, Any], blessing: dict[str, Any], vdir: Path,
               triton_row: dict[str, Any] | None) -> str:
        """Upload the deployment folder of this version on `target`; returns the card's sha256."""
        with tempfile.TemporaryDirectory(prefix="kfopt-publish-") as tmp:
            folder = Path(tmp) / "deployment"
            shutil.copytree(vdir, folder / "model")
            if triton_row is not None:
                tdir = _variant_dir(self.variants, triton_row["name"])
                tmeta = variant.read(tdir)
                # a TensorRT engine's profile bounds its batch; otherwise the largest batch measured
                batch = tmeta.params.get("max_batch") or max(self.report["settings"]["batch_sizes"])
                triton.write_repository(folder / "triton", self.name, tdir, tmeta, max_batch_size=int(batch),
                                        gpu=target == "gpu", class_names=(self.dataset or {}).get("class_names"))
            data = _dumps(card)
            (folder / CARD).write_bytes(data)
            (folder / "blessing.json").write_bytes(_dumps(blessing))
            storage.upload_dir(folder, self.reg.deployment(target, self.name, self.version))
        return sha256(data)

    def target(self, target: str, choice: dict[str, Any]) -> dict[str, Any]:
        """Gate and, if blessed, promote this run's choice for `target`; returns the blessing."""
        for _ in range(5):
            blessing: dict[str, Any] = {"target": target, "variant": choice.get("chosen"), "version": self.version,
                                        "blessed": False, "previous": None, "serving_version": None,
                                        "latency_compared": None, "uri": None, "triton": None, "metrics": {}}
            try:
                previous = self.reg.promoted(target, self.name)
            except ArtifactError as err:
                return {**blessing, "decision": "kept",
                        "reasons": [f"not promoted: the promotion record is broken: {err}"]}
            serving = f"v{previous.version} stays in service" if previous else f"no model is promoted for {target} yet"
            if previous:
                blessing.update(serving_version=previous.version, previous={
                    "version": previous.version, "promotion": previous.number,
                    "variant": previous.record.get("variant")})
            if not choice.get("chosen"):
                return {**blessing, "decision": "none",
                        "reasons": [f"nothing to promote ({choice['reason']})", serving]}
            row = _row(self.report["rows"], choice["chosen"], choice["hardware"])
            vdir = _variant_dir(self.variants, row["name"])
            blessing["metrics"] = {"accuracy": row["accuracy"],
                                   "accuracy_delta_pp": row["verification"]["accuracy_delta_pp"],
                                   "p50_ms": {b: s["p50_ms"] for b, s in row["latency"].items()},
                                   "size_gzip_bytes": row.get("size_gzip_bytes"), "hardware": row["hardware"]}
            try:
                prev_card = self.reg.card(previous) if previous else None
            except ArtifactError as err:
                return {**blessing, "decision": "kept", "reasons": [f"not promoted: {err}", serving]}
            meta = variant.read(vdir)
            if prev_card is not None and _same_files(meta, prev_card):
                return {**blessing, "blessed": True, "decision": "unchanged", "uri": previous.folder,
                        "reasons": [f"already promoted as v{previous.version} (byte-identical: the sha256 of "
                                    "every file matches)", serving]}
            refusal = _mismatch(self.model, prev_card) if prev_card is not None else None
            if refusal:
                return {**blessing, "decision": "refused", "reasons": [f"not compared: {refusal}", serving]}
            card = self.card(target, choice, row, meta, previous)
            blessed, reasons, compared = gate(card, prev_card, accuracy_tolerance_pp=self.tolerances["accuracy_pp"],
                                              latency_tolerance=self.tolerances["latency_relative"])
            blessing.update(latency_compared=compared, reasons=reasons)
            if not blessed:
                return {**blessing, "decision": "kept", "reasons": reasons + [serving]}
            uri = self.reg.deployment(target, self.name, self.version)
            tri = self.triton_row(target, choice, row)
            card["gate"].update(decision="promoted", reasons=reasons, latency_compared=compared)
            card["serving"] = {
                "files": f"{uri}/model",
                "triton": None if tri is None else {"repository": f"{uri}/triton", "model": self.name,
                                                    "variant": tri["name"],
                                                    "platform": triton.PLATFORMS[tri["format"]][0]},
                "note": None if tri else _no_triton(target, row["format"])}
            promoted = {**blessing, "blessed": True, "decision": "promoted", "serving_version": self.version,
                        "uri": uri, "triton": card["serving"]["triton"] and f"{uri}/triton"}
            card_sha = self.deploy(target, card, promoted, vdir, tri)
            record = {"token": uuid.uuid4().hex, "run_id": self.run_id, "version": self.version,
                      "variant": row["name"], "card_sha256": card_sha, "created": _now(),
                      "previous": previous.number if previous else None}
            if self.reg.claim_promotion(target, self.name, (previous.number if previous else 0) + 1, record):
                return promoted
        raise StorageError(f"could not promote {self.name} v{self.version} on {target}: other runs kept promoting "
                           "at the same time; rerun publish once they have finished.")


def _dataset(dataset_dir: Path | None) -> dict[str, Any] | None:
    if dataset_dir is None:
        return None
    schema = json.loads((Path(dataset_dir) / "schema.json").read_text())
    return {k: schema.get(k) for k in ("provenance", "files", "counts", "class_names", "task")}


def _load_report(report_dir: Path) -> dict[str, Any]:
    path = Path(report_dir) / "report.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable report ({err}); run the report stage first.") from None


def run(report_dir: Path, variant_roots: list[Path], registry_uri: str, name: str, out_dir: Path, *,
        accuracy_tolerance_pp: float = 0.5, latency_tolerance: float = 0.10, dataset_dir: Path | None = None,
        enabled: bool = True, run_id: str | None = None) -> dict[str, Any]:
    """Publish one run; write blessings/<target>.json, publish.json and publish.md to `out_dir`.

    An empty `name` is resolved from the baseline (resolve_name): a brought model's own name.
    """
    if name:
        check_name(name)
    if enabled and not str(registry_uri).strip():
        raise ConfigError("No model registry is set; set publish.registry (pipeline parameter registry) to a gs:// "
                          "URI or a folder, or switch publishing off with publish.enabled=false.")
    if accuracy_tolerance_pp < 0 or latency_tolerance < 0:
        raise ConfigError("publish.accuracy_tolerance_pp and publish.latency_tolerance must be >= 0.")
    report = _load_report(report_dir)
    variants = _index(variant_roots)
    baseline = variant.read(_variant_dir(variants, report["baseline"]["name"]), verify=False)
    name = resolve_name(name, baseline.params)
    check_name(name)
    tolerances = {"accuracy_pp": accuracy_tolerance_pp, "latency_relative": latency_tolerance}
    result: dict[str, Any] = {"name": name, "registry": str(registry_uri), "enabled": enabled, "version": None,
                              "run_id": run_id or uuid.uuid4().hex, "created": _now(), "tolerances": tolerances}
    if not enabled:
        result["targets"] = {t: {"target": t, "variant": c.get("chosen"), "blessed": False, "decision": "off",
                                 "reasons": ["publishing is switched off (publish.enabled is false)"], "metrics": {}}
                             for t, c in report["choices"].items()}
    else:
        _publish(result, report, variants, Registry(str(registry_uri)), _dataset(dataset_dir))
    with variant.staged_dir(Path(out_dir)) as tmp:
        (tmp / BLESSINGS).mkdir()
        for target, blessing in result["targets"].items():
            (tmp / BLESSINGS / f"{target}.json").write_bytes(_dumps(blessing))
        (tmp / PUBLISH_JSON).write_bytes(_dumps(result))
        (tmp / "publish.md").write_text(markdown(result))
    return result


def _publish(result: dict[str, Any], report: dict[str, Any], variants: dict[str, Path], reg: Registry,
             dataset: dict[str, Any] | None) -> None:
    """Write the run into the registry, gate every target; fills in `result` and records it as publish.json.

    Nothing is written when the name's promoted models are another architecture (result["refused"]),
    nor when every chosen variant is byte-identical to the promoted one (result["unchanged"]).
    """
    name, run_id = result["name"], result["run_id"]
    baseline_dir = _variant_dir(variants, report["baseline"]["name"])
    model = interface(variant.read(baseline_dir))
    promoted = {t: _promoted_card(reg, t, name) for t in report["choices"]}
    refusal = next((why for _, card in promoted.values() if card and (why := _mismatch(model, card))), None)
    if refusal:
        result.update(refused=refusal, optimized=[], targets={t: {
            "target": t, "variant": c.get("chosen"), "version": None, "blessed": False, "decision": "refused",
            "reasons": [f"not published: {name} holds another architecture"], "metrics": {}}
            for t, c in report["choices"].items()})
        return
    chosen = {t: c["chosen"] for t, c in report["choices"].items() if c.get("chosen")}
    if chosen and all(promoted[t][1] and _same_files(variant.read(_variant_dir(variants, v), verify=False),
                                                     promoted[t][1]) for t, v in chosen.items()):
        pub = _Run(report, variants, reg, name, None, run_id, dataset, result["tolerances"], model)
        result.update(unchanged=True, optimized=[],
                      targets={t: pub.target(t, c) for t, c in report["choices"].items()})
        return
    try:
        version = reg.claim_version(name, {"token": uuid.uuid4().hex, "run_id": run_id, "name": name,
                                           "created": _now(), "kfopt_version": __version__})
    except StorageError as err:
        raise StorageError(f"the model registry {reg.uri} is not writable ({err}); set publish.registry to a "
                           "writable folder or gs:// URI.") from None
    storage.write_bytes(f"{reg.version_dir(name, version)}/report.json", _dumps(report))
    storage.upload_dir(baseline_dir, reg.trained(name, version))
    optimized = sorted({r["name"] for r in report["rows"] if select.passed(r)} - {report["baseline"]["name"]})
    for vname in optimized:
        vdir = _variant_dir(variants, vname)
        variant.read(vdir)
        storage.upload_dir(vdir, f"{reg.optimized(name, version)}/{vname}")
    pub = _Run(report, variants, reg, name, version, run_id, dataset, result["tolerances"], model)
    result.update(version=version, optimized=optimized,
                  uris={"version": reg.version_dir(name, version), "trained": reg.trained(name, version),
                        "optimized": reg.optimized(name, version)},
                  targets={t: pub.target(t, c) for t, c in report["choices"].items()})
    storage.write_bytes(f"{reg.version_dir(name, version)}/{PUBLISH_JSON}", _dumps(result))


def summary_lines(pub: dict[str, Any]) -> list[str]:
    """One line per target: what the gate decided and why."""
    lines = []
    for target, b in pub["targets"].items():
        why = "; ".join(b["reasons"])
        if b["decision"] == "promoted":
            lines.append(f"{target}: promoted {b['variant']} as v{b['version']} — {why}"
                         + (f" (Triton repository: {b['triton']})" if b.get("triton") else ""))
        elif b["decision"] == "kept":
            lines.append(f"{target}: {b['variant']} not promoted — {why}")
        elif b["decision"] == "unchanged":
            lines.append(f"{target}: {b['variant']} {why}")
        elif b["decision"] == "refused":
            lines.append(f"{target}: {b['variant'] or 'nothing'} refused — {why}")
        else:
            lines.append(f"{target}: {why}")
    return lines


def headline(pub: dict[str, Any]) -> str:
    if not pub["enabled"]:
        return f"Publishing is switched off; nothing was written to the model registry {pub['registry']}."
    if pub.get("refused"):
        return f"Model registry {pub['registry']}: nothing published. {pub['refused']}."
    if pub.get("unchanged"):
        return (f"Model registry {pub['registry']}: {pub['name']}: no new version; every chosen variant is already "
                "promoted (byte-identical, sha256 of every file).")
    return (f"Model registry {pub['registry']}: {pub['name']} v{pub['version']} (gate tolerances: accuracy "
            f"{pub['tolerances']['accuracy_pp']:g} pp, latency {pub['tolerances']['latency_relative']:.0%}).")


def markdown(pub: dict[str, Any]) -> str:
    return "\n".join(["## Publishing", "", headline(pub), ""] + [f"- {line}" for line in summary_lines(pub)]) + "\n"


def text(pub: dict[str, Any]) -> str:
    return "\n".join([headline(pub)] + [f"  {line}" for line in summary_lines(pub)])


def load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise KfoptError(f"{path} is not a readable publish result ({err}); re-run the pipeline.") from None
