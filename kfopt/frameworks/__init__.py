"""Source-framework adapters: the only code that imports TensorFlow or torch to handle "the baseline".

A variant's kfopt.json names its source `framework` (keras, torch, onnx); a stage that needs the
model object (to fine-tune, prune, distill, export) asks `frameworks.of(meta)` for that framework's
adapter module instead of importing Keras itself. Every adapter module exposes the same small surface:

    NAME: str                      "keras" | "torch" | "onnx"
    CAPABILITIES: frozenset[str]   techniques that need this framework's model object:
                                   "fine_tune", "prune", "distill", "qat", "tflite" (direct TFLite export)
    SUFFIXES: tuple[str, ...]      what a user's model file/folder looks like (".keras", ".pt2", ".onnx", ...)
    FORMAT, RUNTIME: str           the variant format `save` writes and what runs it ("savedmodel", "tensorflow")
    accepts(path) -> bool          is this user-given file/folder this framework's model?
    load_user(path, schema) -> (model, notes)   a model the user brings, loaded safely (no pickle, no code
                                   from the file), checked against the data and ending in probabilities;
                                   `notes` (what was checked or changed) go to the baseline's kfopt.json extra
    load(variant_dir)              a variant's model object back
    save(model, variant_dir)       the model files of a variant (kfopt.json is written by the caller)
    predict(model, x) -> probs     float32 probabilities, in batches, never the framework's slow predict()
    fine_tune(model, ds, *, epochs, learning_rate, batch_size, seed) -> history
    export_onnx(model, input_spec, opset) -> onnx.ModelProto   with a dynamic batch axis
    io_specs(schema) -> (TensorSpec, TensorSpec)

Adapters are imported lazily: importing this package imports no framework.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from kfopt import variant
from kfopt.errors import ArtifactError, ModelError

#: name → adapter module. A new framework is one module here plus one entry.
ADAPTERS = {"keras": "kfopt.frameworks.keras", "torch": "kfopt.frameworks.torch", "onnx": "kfopt.frameworks.onnx"}


def get(name: str) -> ModuleType:
    if name not in ADAPTERS:
        raise ArtifactError(f"Unknown source framework {name!r}; kfopt knows {', '.join(ADAPTERS)}.")
    try:
        return importlib.import_module(ADAPTERS[name])
    except ModuleNotFoundError as exc:
        raise ModelError(f"The {name} adapter needs the {exc.name!r} package, which is not installed here; "
                         "install kfopt's pinned requirements (make run does).") from None


def of(meta: variant.VariantMeta) -> ModuleType:
    """The adapter of the framework `meta`'s model came from."""
    return get(meta.framework)


def has(meta: variant.VariantMeta, capability: str) -> bool:
    """Can `capability` (prune, distill, qat, fine_tune, tflite) run on the model behind `meta`?"""
    try:
        adapter = of(meta)
        # an adapter whose models differ (torch: kfopt's own module vs a brought program) says per variant
        caps = adapter.capabilities(meta) if hasattr(adapter, "capabilities") else adapter.CAPABILITIES
        return capability in caps
    except (ArtifactError, ModelError):
        return False


def detect(path: Path) -> ModuleType:
    """The adapter of a model file or folder the user brings, from what it is (never a guess from a name only)."""
    path = Path(path)
    for name in ADAPTERS:
        try:
            adapter = get(name)
        except ModelError:
            continue
        if adapter.accepts(path):
            return adapter
    suffixes = ", ".join(s for name in ADAPTERS for s in _suffixes(name))
    raise ModelError(f"{path} is not a model kfopt can load; kfopt takes {suffixes}. Pickles (.pt, .pth, .pkl, .h5) "
                     "are refused because loading them can run code: save a torch model with "
                     "torch.export.save(torch.export.export(model, (example,)), 'model.pt2'), a Keras model with "
                     "model.save('model.keras').")


def _suffixes(name: str) -> tuple[str, ...]:
    try:
        return get(name).SUFFIXES
    except ModelError:
        return ()
