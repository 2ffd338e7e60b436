"""The train stage: build one of kfopt's own architectures, fit it on the Dataset artifact, write the baseline.

kfopt's architectures are tf-keras models (kfopt.models.architectures), so building them and their
mixed-precision policy is Keras code; fitting, saving and the tensor specs go through the Keras
adapter (kfopt.frameworks.keras), like every other stage's handling of a baseline. A model the user
brings goes to kfopt.models.existing instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError
from kfopt.models.architectures import build


def float32_copy(model, architecture: str, schema: ds_mod.Schema, width: float = 1.0):
    """The same network built under the float32 policy with the trained weights.

    A mixed-precision model computes in bfloat16/float16, which converters handle badly; the
    variables are float32 either way, so exporting a float32 twin loses nothing.
    """
    from kfopt.tfenv import keras

    keras().mixed_precision.set_global_policy("float32")
    twin = build(architecture, schema.feature_shape, schema.num_classes, width)
    twin.set_weights(model.get_weights())
    return twin


def write_baseline(out_dir: Path, adapter, model, schema: ds_mod.Schema, params: dict[str, Any],
                   extra: dict[str, Any]) -> variant.VariantMeta:
    """A model kfopt trained, saved by its framework's adapter as the baseline variant (atomically)."""
    in_spec, out_spec = adapter.io_specs(schema)
    meta = variant.VariantMeta(
        name="baseline", format=adapter.FORMAT, precision="fp32", target="cpu", input=in_spec, output=out_spec,
        task=schema.task, framework=adapter.NAME, runtime=adapter.RUNTIME, technique="train", params=params,
        extra=extra)
    with variant.staged_dir(Path(out_dir)) as tmp:
        adapter.save(model, tmp)
        return variant.write(tmp, meta)


def curves_html(history: dict[str, list[float]]) -> str:
    """Loss/accuracy curves as a small self-contained HTML page (a KFP HTML artifact)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return "<p>No training curves: the model was provided, not trained here.</p>"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(history.get(key, []), label=f"train {key}")
        ax.plot(history.get(f"val_{key}", []), label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<h2>Training curves</h2><img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def on_trainjob(dataset_dir: Path, out_dir: Path, *, framework: str, workers: int, namespace: str, timeout_s: float,
                deployment: str, api_client=None, **hyper: Any) -> dict[str, Any]:
    """`train.engine: trainjob`: N nodes of a Kubeflow Trainer TrainJob on the deployment's gpu pool."""
    from kfopt import deployment as deploy_mod
    from kfopt import trainjob

    if not deployment:
        raise ConfigError("train.engine: trainjob needs the deployment file (deploy.deployment) whose gpu pool "
                          "the TrainJob runs on; compile with --deployment, or set train.engine: local.")
    return trainjob.run(dataset_dir, out_dir, workers=workers, placement=deploy_mod.load(deployment),
                        namespace=namespace, timeout_s=timeout_s, framework=framework, api_client=api_client, **hyper)


def run(dataset_dir: Path, out_dir: Path, *, architecture: str = "digits_cnn", model_uri: str = "",
        epochs: int = 30, batch_size: int = 32, learning_rate: float = 1e-3, patience: int = 4,
        mixed_precision: str = "none", seed: int = 1, width: float = 1.0, framework: str = "keras",
        workers: int = 1, engine: str = "local", namespace: str = "kfopt", timeout_s: float = 3600.0,
        deployment: str = "") -> dict[str, Any]:
    from kfopt.frameworks import keras as adapter
    from kfopt.tfenv import keras

    if model_uri:
        from kfopt.models import existing  # optimize a model the user already trained

        return existing.run(dataset_dir, out_dir, model_uri=model_uri)
    if framework == "torch":
        from kfopt.models import torch_train

        return torch_train.run(dataset_dir, out_dir, architecture=architecture, epochs=epochs, batch_size=batch_size,
                               learning_rate=learning_rate, patience=patience, mixed_precision=mixed_precision,
                               seed=seed, width=width, workers=workers, engine=engine, namespace=namespace,
                               timeout_s=timeout_s, deployment=deployment)

    if mixed_precision not in ("none", "mixed_bfloat16", "mixed_float16"):
        raise ConfigError(f"mixed_precision must be none, mixed_bfloat16 or mixed_float16, got {mixed_precision!r}.")
    hyper = dict(architecture=architecture, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                 patience=patience, mixed_precision=mixed_precision, seed=seed, width=width)
    if workers != 1 and engine == "trainjob":  # MWMS nodes of a TrainJob on kfopt's TensorFlow runtime
        return on_trainjob(dataset_dir, out_dir, framework="keras", workers=workers, namespace=namespace,
                           timeout_s=timeout_s, deployment=deployment, **hyper)
    if workers != 1:  # N local TF processes, MultiWorkerMirroredStrategy with TF_CONFIG (keras_mwms)
        from kfopt.models import keras_mwms

        return keras_mwms.launch(dataset_dir, out_dir, workers=workers, **hyper)
    ds = ds_mod.read(dataset_dir)
    keras().utils.set_random_seed(seed)
    keras().mixed_precision.set_global_policy("float32" if mixed_precision == "none" else mixed_precision)
    model = build(architecture, ds.schema.feature_shape, ds.schema.num_classes, width)
    curves = adapter.fine_tune(model, ds, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                               patience=patience, seed=seed)
    if mixed_precision != "none":
        model = float32_copy(model, architecture, ds.schema, width)
        adapter.compile_for(model, ds.schema.task, learning_rate)
    xt, yt = ds.split("test")
    test_loss, test_acc = model.evaluate(xt, yt, verbose=0)
    write_baseline(out_dir, adapter, model, ds.schema,
                   {"architecture": architecture, "epochs_run": len(curves["loss"]), "batch_size": batch_size,
                    "learning_rate": learning_rate, "mixed_precision": mixed_precision, "seed": seed, "width": width},
                   {"parameters": int(model.count_params()), "test_accuracy": float(test_acc)})
    return {"test_accuracy": float(test_acc), "test_loss": float(test_loss), "epochs": len(curves["loss"]),
            "final_val_accuracy": curves["val_accuracy"][-1], "parameters": int(model.count_params()),
            "history": curves}
