"""The contract every loader of a model the user brings follows: Keras today (kfopt.models.existing),
torch and ONNX loaders the same way.

A brought model was trained on inputs kfopt cannot see, so kfopt must judge it on exactly those:

1. Data as given. The preprocess stage resolves `normalize=auto` to `none` when `model_uri` is set
   (kfopt.data.preprocess.resolve_normalize); a loader never transforms the features itself.
2. A model that preprocesses its own input (Keras Rescaling/Normalization layers, a transform inside
   a torch forward, the first nodes of an ONNX graph) must not also get normalized data:
   `check_preprocessing` refuses that combination with the fix.
3. The baseline's test accuracy is measured on the data as given and checked: below 1.5 × chance
   (1/num_classes; 0.5 for a binary task) it is implausible. `implausible` says why and lists the
   likely causes; the loader records it in the baseline's kfopt.json (`extra.implausible_baseline`)
   and prints it with `warn`, and the report shows it, instead of optimizing against it silently.
4. The registry name is the user's `model_name`, else the model file/folder's own name
   (kfopt.publish.name_from_uri), never a config's.

This module is light (no TensorFlow, no torch): it only reasons about names, numbers and the schema.
"""

from __future__ import annotations

from typing import Any

from kfopt.data import dataset as ds_mod
from kfopt.errors import ModelError

CHANCE_FACTOR = 1.5


def chance(task: str, num_classes: int) -> float:
    """Accuracy of guessing: 1/num_classes, and 0.5 for a binary task."""
    return 0.5 if task == "binary" else 1.0 / max(int(num_classes), 1)


def check_preprocessing(layers: list[str], schema: ds_mod.Schema) -> None:
    """Refuse normalized data for a model whose first layers (`layers`) normalize the input themselves."""
    method = schema.normalization.get("method", "none")
    if layers and method != "none":
        raise ModelError(f"The model preprocesses its own input ({', '.join(layers)}) but the dataset was also "
                         f"normalized ({method}); rerun with normalize=none (or auto, the default, with the model "
                         "given as model_uri) so the model sees the features as given.")


def implausible(accuracy: float, schema: ds_mod.Schema) -> dict[str, Any] | None:
    """None if `accuracy` is plausible for the data; else what is wrong and the likely causes."""
    base = chance(schema.task, schema.num_classes)
    threshold = CHANCE_FACTOR * base
    if accuracy >= threshold - 1e-9:  # 1.5 × 0.1 is 0.15000000000000002 in floating point
        return None
    method = schema.normalization.get("method", "none")
    fed = ("standardized features (normalize=standardize)" if method == "standardize"
           else "the features exactly as given (no normalization)")
    names = schema.class_names or [str(i) for i in range(schema.num_classes)]
    order = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    causes = [
        f"preprocessing differs from training: the model was fed {fed}; if it was trained on other inputs "
        "(standardized vs raw, pixels in [0, 1] vs [0, 255], another resize or channel order), give the data "
        "preprocessed the way it was trained, or set normalize to match (auto/none: as given, standardize)",
        f"label order: output unit i of the model must be class i of the data (the data's classes in order: "
        f"{order})",
        "wrong data: the dataset is not the one the model was trained for (another task, split or feature layout)",
    ]
    classes = "a binary task" if schema.task == "binary" else f"{schema.num_classes} classes"
    message = (f"the brought model's test accuracy {accuracy:.4f} is below 1.5 × chance ({threshold:.4f} for "
               f"{classes}); every variant is judged against this baseline, so check it first. Likely causes: "
               + "; ".join(f"({i}) {c}" for i, c in enumerate(causes, 1)) + ".")
    return {"accuracy": float(accuracy), "chance": base, "threshold": threshold, "normalization": method,
            "causes": causes, "message": message}


def warn(stage: str, message: str) -> None:
    """One `kfopt <stage>: warning: ...` line on stdout: `kfopt run` shows lines starting with `kfopt `."""
    print(f"kfopt {stage}: warning: {message}", flush=True)
