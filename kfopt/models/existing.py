"""Optimize a model the user already trained: load it safely, check it against the data, write the baseline.

The framework is found from what the file is (kfopt.frameworks.detect): a Keras `.keras` file or
SavedModel folder today, torch and ONNX files through their adapters, from a local path or gs://.
The adapter loads it without running code from the file, checks its input and output against the
Dataset artifact (one clear error per mismatch) and makes it end in probabilities. The model sees
the data as given (normalize=auto resolves to none for it) and an implausible baseline accuracy is
said out loud: the contract of kfopt.models.brought.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kfopt import frameworks, storage, variant, verify
from kfopt.data import dataset as ds_mod
from kfopt.models import brought


def run(dataset_dir: Path, out_dir: Path, *, model_uri: str) -> dict[str, Any]:
    """Write the user's model as the baseline variant, like train.run does for a trained one."""
    ds = ds_mod.read(dataset_dir)
    with tempfile.TemporaryDirectory() as tmp:  # the model may read its files until it is saved as the baseline
        path = storage.fetch(model_uri, Path(tmp), require_complete=False)
        adapter = frameworks.detect(path)
        model, notes = adapter.load_user(path, ds.schema)
        x, y = ds.split("test")
        test_acc = verify.quality(adapter.predict(model, x), y, ds.schema.task)["accuracy"]
        implausible = brought.implausible(test_acc, ds.schema)
        if implausible:
            brought.warn("train", implausible["message"])
        in_spec, out_spec = adapter.io_specs(ds.schema)
        notes = dict(notes)
        architecture = notes.pop("architecture", Path(model_uri.rstrip("/")).name)
        meta = variant.VariantMeta(
            name="baseline", format=adapter.FORMAT, precision="fp32", target="cpu", input=in_spec, output=out_spec,
            task=ds.schema.task, framework=adapter.NAME, runtime=adapter.RUNTIME, technique="provided",
            params={"model_uri": model_uri, "architecture": architecture},
            extra={**notes, "test_accuracy": test_acc, "implausible_baseline": implausible})
        with variant.staged_dir(Path(out_dir)) as tmp_out:
            adapter.save(model, tmp_out)
            variant.write(tmp_out, meta)
    return {"test_accuracy": test_acc, "parameters": notes.get("parameters"), "epochs": 0,
            "provided": 1, "implausible_baseline": implausible is not None, "history": {}}
