"""The augment stage: more training samples, deterministic for a seed; val and test are untouched.

Images get random integer shifts, small rotations and gaussian noise; tabular rows get gaussian
noise in (normalized) feature space.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = img[ys, xs]
    return out


def augment_images(x: np.ndarray, rng: np.random.Generator, max_shift: int, max_rotation: float,
                   noise_std: float, background: float) -> np.ndarray:
    from scipy import ndimage

    out = np.empty_like(x)
    for i, img in enumerate(x):
        angle = rng.uniform(-max_rotation, max_rotation)
        img = ndimage.rotate(img, angle, axes=(0, 1), reshape=False, order=1, mode="constant", cval=background)
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        img = _shift(img - background, int(dy), int(dx)) + background
        out[i] = img + rng.normal(0, noise_std, img.shape)
    return out.astype(np.float32)


def run(dataset_dir: Path, out_dir: Path, *, enabled: bool = True, factor: float = 1.0, seed: int = 7,
        max_shift: int = 1, max_rotation: float = 10.0, noise_std: float = 0.03) -> dict[str, Any]:
    if factor < 0:
        raise ConfigError(f"augment factor must be >= 0, got {factor}.")
    ds = ds_mod.read(dataset_dir)
    x, y = ds.split("train")
    n_new = int(round(factor * len(y))) if enabled else 0
    if n_new == 0:
        with variant.staged_dir(Path(out_dir)) as tmp:
            shutil.copytree(dataset_dir, tmp, dirs_exist_ok=True)
        return {"augmented": 0, "train": int(len(y))}
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(y), size=n_new, replace=n_new > len(y))
    if ds.schema.kind == "image":
        # The value a blank pixel has after normalization, so rotated/shifted borders stay blank.
        background = float(x.min())
        new_x = augment_images(x[pick], rng, max_shift, max_rotation, noise_std, background)
    else:
        new_x = (x[pick] + rng.normal(0, noise_std, x[pick].shape)).astype(np.float32)
    ds.splits["train"] = (np.concatenate([x, new_x]), np.concatenate([y, y[pick]]))
    ds.schema.provenance["augment"] = {"factor": factor, "seed": seed, "added": n_new, "max_shift": max_shift,
                                       "max_rotation": max_rotation, "noise_std": noise_std}
    with variant.staged_dir(Path(out_dir)) as tmp:
        ds_mod.write(tmp, ds)
    return {"augmented": n_new, "train": int(len(ds.splits["train"][1]))}
