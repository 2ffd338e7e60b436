"""The XLA stage: the baseline as fixed-batch XLA programs for the TPU pool, verified where it runs.

Exports variant `xla` (kfopt.formats.xla: SavedModel with one jit_compile serving function per
batch size, plus StableHLO and HLO of each), then loads the saved programs back, checks that they
are marked for XLA, runs the test split through them and compares with the baseline's outputs.
On a TPU node that run happens on the TPU; here it is a real XLA compile and run on the CPU, and
kfopt.json says the TPU was not present rather than pretending.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kfopt import formats, frameworks, variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError
from kfopt.export import child_meta
from kfopt.formats import xla as xla_fmt

NAME = "xla"


def _predict(runner, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runner.predict(x[i:i + batch]) for i in range(0, len(x), batch)])


def check_against_baseline(variant_dir: Path, meta: variant.VariantMeta, baseline_dir: Path, dataset_dir: Path) -> dict[str, Any]:
    """Run the saved XLA programs on the test split; compare with the baseline SavedModel's outputs."""
    from kfopt import verify as verify_mod

    x, _ = ds_mod.read(dataset_dir).split("test")
    runner = xla_fmt.load(variant_dir, meta)
    batch = meta.extra["programs"][-1]["batch"]
    start = time.perf_counter()
    probs = _predict(runner, x, batch)
    seconds = time.perf_counter() - start
    base = _predict(formats.load(baseline_dir), x, batch)
    task = meta.task
    agree = float((verify_mod.labels(probs, task) == verify_mod.labels(base, task)).mean())
    return {"device": runner.device, "samples": int(len(x)),
            "xla_marked": runner.marked_for_xla,
            "max_abs_error": float(np.abs(probs.reshape(base.shape) - base).max()), "agreement": agree,
            "seconds": round(seconds, 3)}


def why_not(parent: variant.VariantMeta) -> str | None:
    """XLA programs are traced from a model TensorFlow runs (kfopt.json's runtime), or None if it is one."""
    if parent.runtime == "tensorflow":
        return None
    if parent.framework == "torch":
        from kfopt.frameworks.torch import NO_XLA

        return NO_XLA
    return (f"XLA programs are traced from a TensorFlow model; this baseline is a {parent.framework} model run by "
            f"{parent.runtime or 'an unknown runtime'}")


def run(dataset_dir: Path, baseline_dir: Path, out_dir: Path, *, enabled: bool = True,
        batch_sizes: tuple[int, ...] = (1, 64), log: Callable[[str], None] = print) -> dict[str, Any]:
    batch_sizes = list(batch_sizes)
    if not all(isinstance(b, int) and b >= 1 for b in batch_sizes):
        raise ConfigError(f"XLA batch sizes must be positive integers, got {batch_sizes}.")
    parent = variant.read(baseline_dir)
    with variant.staged_dir(Path(out_dir)) as tmp:
        vdir = tmp / NAME
        reason = "switched off by a pipeline parameter (xla_enabled)" if not enabled else why_not(parent)
        if reason:
            variant.write_skipped(vdir, NAME, "xla", "tpu", reason, technique="xla", parent=parent.name,
                                  precision=parent.precision)
            return {"xla_built": False}
        device, where = xla_fmt.tpu_device()
        start = time.perf_counter()
        model = frameworks.of(parent).load(baseline_dir)
        programs = xla_fmt.export(model, vdir, batch_sizes, parent.input, parent.output.name)
        meta = child_meta(parent, NAME, format="xla", runtime="xla", technique="xla", target="tpu",
                          params={"batch_sizes": sorted(set(batch_sizes))},
                          extra={"programs": programs, "saved_model": xla_fmt.DIRNAME,
                                 "tpu": where if device else f"not present: {where}"})
        variant.write(vdir, meta)
        meta.extra["verification"] = check_against_baseline(vdir, meta, baseline_dir, dataset_dir)
        variant.write(vdir, meta)
        check = meta.extra["verification"]
        log(f"  {NAME}: programs for batch {', '.join(str(p['batch']) for p in programs)}; verified on "
            f"{check['device']}: max abs error {check['max_abs_error']:.2e}, agreement {check['agreement']:.4f}")
        return {"xla_built": True, "xla_seconds": round(time.perf_counter() - start, 2),
                "xla_max_abs_error": check["max_abs_error"], "xla_agreement": check["agreement"]}
