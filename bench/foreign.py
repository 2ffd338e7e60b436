"""Reference models kfopt did not build: tf_keras.applications networks the bench trains itself.

A user who brings a model brings it with the data it was trained on. The bench plays that user:
it writes the digits as 32×32 RGB images (the 8×8 scans upsampled 4× by nearest neighbour, the grey
value copied into 3 channels, pixels scaled from 0..16 to [0, 1]) into one NPZ, trains a
`tf_keras.applications` network on it, saves it as a `.keras` file, and hands both to
`kfopt run --data <npz> --model <keras>`. The pipeline then treats it as any user's model (data as
given, no normalization: kfopt.models.brought).

So that the bench never trains on rows kfopt later tests on, the training split is made by kfopt's
own preprocess stage with the pipeline's seed and fractions: the same rows land in train, val and test
in the bench and in the run. Training is plain Keras (Adam, early stopping on the validation loss with
the best weights restored), as a user would do it; the BatchNormalization momentum of the applications
networks (0.999, tuned for ImageNet's million images) is set to 0.9 first, or the moving statistics
would not have settled after the few hundred steps ~1,100 images allow, and the eval-mode model would
answer far worse than it trained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SIZE = 32  # pixels a side: the smallest input tf_keras.applications' ResNet50 and MobileNetV2 accept
SPLIT = {"val_fraction": 0.15, "test_fraction": 0.2, "seed": 42}  # the pipeline's DataConfig defaults
BN_MOMENTUM = 0.9


def _mobilenetv2(k, classes: int):
    return k.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.5, weights=None, classes=classes)


def _resnet50(k, classes: int):
    return k.applications.ResNet50(input_shape=(SIZE, SIZE, 3), weights=None, classes=classes)


# config name -> (what it is, builder, training epochs at most, learning rate)
MODELS: dict[str, tuple[str, Callable, int, float]] = {
    "mobilenetv2": ("tf_keras.applications.MobileNetV2(alpha=0.5, weights=None), 32×32×3", _mobilenetv2, 40, 2e-3),
    "resnet50": ("tf_keras.applications.ResNet50(weights=None), 32×32×3", _resnet50, 25, 1e-3),
}


def digits32(path: Path) -> Path:
    """The bundled digits as 32×32×3 images in [0, 1], all 1,797 rows, into an NPZ at `path`."""
    from sklearn import datasets

    bunch = datasets.load_digits()
    scale = SIZE // bunch.images.shape[1]
    x = np.repeat(np.repeat(bunch.images.astype(np.float32) / 16.0, scale, axis=1), scale, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=np.repeat(x[..., None], 3, axis=3), y=bunch.target.astype(np.int64))
    return path


def train(name: str, npz: Path, out_dir: Path, *, epochs: int | None = None, limit: int = 0, seed: int = 1,
          patience: int = 5, batch_size: int = 32) -> dict[str, Any]:
    """Train the `name` network on the pipeline's own training split of `npz`; save `out_dir/<name>.keras`.

    `limit` keeps that many rows (stratified, as data.limit does) for a quick check; the run that
    optimizes the model must then use the same limit. Returns what was trained and how well.
    """
    from kfopt import tfenv  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    from kfopt.data import dataset as ds_mod
    from kfopt.data import preprocess
    from kfopt.tfenv import keras

    what, build, max_epochs, learning_rate = MODELS[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocess.run(str(npz), out_dir / "split", limit=limit, normalize="none", min_samples=10, **SPLIT)
    ds = ds_mod.read(out_dir / "split")
    k = keras()
    k.utils.set_random_seed(seed)
    model = build(k, ds.schema.num_classes)
    for layer in model.layers:
        if isinstance(layer, k.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    model.compile(k.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    (xt, yt), (xv, yv), (xs, ys) = ds.split("train"), ds.split("val"), ds.split("test")
    start = time.perf_counter()
    history = model.fit(xt, yt, validation_data=(xv, yv), epochs=epochs or max_epochs, batch_size=batch_size,
                        verbose=0, shuffle=True, callbacks=[k.callbacks.EarlyStopping(
                            monitor="val_loss", patience=patience, restore_best_weights=True)])
    seconds = time.perf_counter() - start
    path = out_dir / f"{name}.keras"
    model.save(path)
    probs = np.concatenate([model(xs[i:i + 256], training=False).numpy() for i in range(0, len(xs), 256)])
    result = {"model": what, "path": str(path), "parameters": int(model.count_params()),
              "epochs_run": len(history.history["loss"]), "epochs_max": epochs or max_epochs,
              "train_rows": int(len(yt)), "train_seconds": round(seconds, 1),
              "val_accuracy": float(history.history["val_accuracy"][int(np.argmin(history.history["val_loss"]))]),
              "test_accuracy": float((probs.argmax(1) == ys).mean()), "bn_momentum": BN_MOMENTUM,
              "learning_rate": learning_rate, "seed": seed}
    (out_dir / "trained.json").write_text(json.dumps(result, indent=1))
    return result


def pipeline_config(bundled_yaml: Path, name: str, npz: Path, model: Path, out: Path) -> Path:
    """A run config for the brought model: the bundled digits config's settings (so the bundled and the
    brought models are optimized alike), with its own name, the 32×32 data and the model as model.uri."""
    import yaml

    raw = yaml.safe_load(bundled_yaml.read_text())
    raw["name"] = name
    raw["data"].update(SPLIT, source=str(npz))  # the split the bench trained on
    raw["model"] = {"uri": str(model)}
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def main(argv: list[str]) -> int:
    """`python foreign.py NAME NPZ OUT_DIR [EPOCHS]`: make the data, train the model (the bench runs this in
    its own process, so TensorFlow never loads into the bench's); EPOCHS 0 or absent: the model's default."""
    name, npz, out_dir, epochs = (*argv, "0")[:4]
    digits32(Path(npz))
    result = train(name, Path(npz), Path(out_dir), epochs=int(epochs) or None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
