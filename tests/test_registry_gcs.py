"""Publishing into a gs:// registry on a real GCS-protocol server (gcp-storage-emulator, fixture `gcs`).

What the concurrency tests here prove, and what they do not: the emulator ignores ifGenerationMatch
and kfopt.storage's client-side check of it is not atomic, so two writers can both "create" the
same object there. The registry's claims therefore go through a ledger first (kfopt.registry):
every claimant writes its own object and only the one the server wrote first may go on. These
tests show that this makes claims exclusive on a server that applies writes one at a time with
increasing generations, as the emulator does. That real GCS rejects the second create of
claim.json (ifGenerationMatch=0) is GCS's documented guarantee and is not exercised here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from publish_inputs import (NAME, check_no_interleaving, chosen_rows, concurrent_publish, edited_report,
                            parse_triton_config, retrained_roots, run_outputs)  # noqa: F401 (run_outputs: fixture)

from kfopt import cli, registry, storage, variant
from kfopt import publish as publish_mod
from kfopt.errors import StorageError
from kfopt.registry import Registry


def publish(run, reg: str, out: Path, report_dir=None, roots=None):
    return publish_mod.run(report_dir or run["report_dir"], roots or run["roots"], reg, NAME, out,
                           dataset_dir=run["dataset"])


def test_publish_to_gcs_writes_complete_folders_and_gates(gcs, run_outputs, tmp_path):
    reg = gcs.uri("registry")
    first = publish(run_outputs, reg, tmp_path / "o1")
    r, rep = Registry(reg), run_outputs["report"]
    assert first["version"] == 1 and r.versions(NAME) == [1] and r.names() == [NAME]
    assert storage.exists_complete(r.trained(NAME, 1))
    baseline = storage.fetch(r.trained(NAME, 1), tmp_path / "dl")  # every file checked against _COMPLETE
    assert variant.read(baseline).name == rep["baseline"]["name"]
    deployment = r.deployment("cpu", NAME, 1)
    assert storage.exists_complete(deployment)
    card = r.card(r.promoted("cpu", NAME))  # checked against the sha256 in the promotion record
    assert card["variant"]["name"] == rep["choices"]["cpu"]["chosen"] and card["lineage"]["baseline"]["uri"] == \
        f"{reg}/models/trained_models/{NAME}/v1"
    config_text = storage.read_text(f"{deployment}/triton/{NAME}/config.pbtxt")
    assert parse_triton_config(config_text).platform == "onnxruntime_onnx"
    assert storage.exists(f"{deployment}/triton/{NAME}/1/model.onnx")

    def less_accurate(report):
        for row in chosen_rows(report):
            row["accuracy"] -= 0.02

    second = publish(run_outputs, reg, tmp_path / "o2", edited_report(run_outputs, tmp_path / "rep", less_accurate),
                     retrained_roots(run_outputs, tmp_path / "retrained", "run-2"))
    assert second["version"] == 2 and second["targets"]["cpu"]["decision"] == "kept"
    assert r.promoted("cpu", NAME).version == 1 and not storage.exists(r.deployment("cpu", NAME, 2))
    assert r.versions(NAME) == [1, 2]


def test_a_byte_identical_rerun_on_gcs_is_already_promoted(gcs, run_outputs, tmp_path):
    reg = gcs.uri("registry")
    publish(run_outputs, reg, tmp_path / "o1")
    again = publish(run_outputs, reg, tmp_path / "o2")
    r = Registry(reg)
    assert again["version"] is None and again["unchanged"] is True
    assert r.versions(NAME, complete=False) == [1] and not storage.exists(r.version_dir(NAME, 2))
    cpu = again["targets"]["cpu"]
    assert cpu["decision"] == "unchanged" and cpu["reasons"][0].startswith("already promoted as v1")
    assert r.promoted("cpu", NAME).number == 1 and "already promoted as v1" in publish_mod.text(again)


def test_only_one_of_many_simultaneous_claims_wins_on_the_server(gcs):
    folder, barrier, wins = gcs.uri("claims/v1"), threading.Barrier(8), []

    def claimant(i):
        barrier.wait()
        wins.append(registry.claim(folder, {"token": f"t{i}"}))

    threads = [threading.Thread(target=claimant, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(wins) == [False] * 7 + [True]
    winner = registry.owner(folder)["token"]
    assert storage.read_json(f"{folder}/claim.json")["token"] == winner
    assert len(storage.list_dir(f"{folder}/ledger")) == 8  # every claimant got as far as the ledger


def test_concurrent_publishers_get_distinct_whole_versions_on_the_server(gcs, run_outputs, tmp_path):
    reg = gcs.uri("registry")
    check_no_interleaving(reg, concurrent_publish(run_outputs, tmp_path, reg, 3), 3)


def test_a_claim_whose_owner_died_after_the_ledger_still_counts(gcs):
    folder = gcs.uri("registry/models/versions/m/v1")
    storage.write_json(f"{folder}/ledger/dead", {"token": "dead", "version": 1, "run_id": "crashed"})  # pragma: allowlist secret
    assert registry.owner(folder)["run_id"] == "crashed"
    assert registry.claim(folder, {"token": "late"}) is False  # pragma: allowlist secret
    assert Registry(gcs.uri("registry")).claim_version("m", {"token": "next"}) == 2  # pragma: allowlist secret


def test_corrupted_card_on_gcs_refuses_promotion_and_show_fails_clearly(gcs, run_outputs, tmp_path, capsys):
    reg = gcs.uri("registry")
    publish(run_outputs, reg, tmp_path / "o1")
    card_uri = f"{Registry(reg).deployment('cpu', NAME, 1)}/model_card.json"
    card = storage.read_json(card_uri)
    card["metrics"]["accuracy"] = 0.1
    storage.write_json(card_uri, card)

    cpu = publish(run_outputs, reg, tmp_path / "o2")["targets"]["cpu"]
    assert cpu["decision"] == "kept" and "does not match the sha256" in cpu["reasons"][0]
    assert Registry(reg).promoted("cpu", NAME).version == 1
    assert cli.main(["models", "show", NAME, "--registry", reg, "--target", "cpu"]) == 2
    assert card_uri in capsys.readouterr().err


def test_models_list_reads_a_gcs_registry(gcs, run_outputs, tmp_path, capsys):
    reg = gcs.uri("registry")
    publish(run_outputs, reg, tmp_path / "o1")
    capsys.readouterr()
    assert cli.main(["models", "list", "--registry", reg]) == 0
    out = capsys.readouterr().out
    chosen = run_outputs["report"]["choices"]["cpu"]["chosen"]
    assert f"Model registry: {reg}" in out and f"v1 {chosen}" in out
    assert cli.main(["models", "show", NAME, "--registry", reg, "--json"]) == 0
    assert {c["target"] for c in json.loads(capsys.readouterr().out)} >= {"cpu", "edge"}


def test_missing_bucket_is_a_clear_error(gcs, run_outputs, tmp_path):
    with pytest.raises(StorageError, match="bucket 'kfopt-no-such-bucket' does not exist"):
        publish(run_outputs, "gs://kfopt-no-such-bucket/registry", tmp_path / "out")
    assert not (tmp_path / "out").exists()
