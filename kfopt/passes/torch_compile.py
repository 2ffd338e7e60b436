"""torch.compile of a torch fp32 variant: the same program, run by Inductor instead of op by op.

Nothing is converted: the variant holds its parent's `.pt2` unchanged and differs only in what runs
it (kfopt.formats.torch_compiled: torch.compile with Inductor, freezing, dynamic=False). It is the fp32
reference of the PT2E int8 row, which the same runner executes.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from kfopt import variant
from kfopt.export import child_meta
from kfopt.formats import torch as torch_fmt
from kfopt.passes import Context, lineage, technique

NAME = "torch_compile"
FORMAT, PRECISION, TARGET, TECHNIQUE = "torch_compile", "fp32", "cpu", "compile"


@dataclasses.dataclass(frozen=True)
class Config:
    """torch.compile takes no settings here: Inductor with freezing and dynamic=False is the runner's."""


def refusal(meta: variant.VariantMeta) -> str | None:
    if meta.format != "torch" or meta.precision != "fp32":
        return f"torch.compile runs a torch fp32 program (.pt2); {meta.name} is {meta.format} {meta.precision}"
    return None


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}{NAME}"


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    parent = variant.read(parent_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(parent_dir) / torch_fmt.FILENAME, out / torch_fmt.FILENAME)
    meta = child_meta(parent, name_for(parent), format=FORMAT, runtime="torch-inductor", precision=PRECISION,
                      target=TARGET, technique=technique(parent, TECHNIQUE),
                      params={"runtime": "torch.compile (inductor, freezing, dynamic=False)"})
    variant.write(out, meta)
    return ctx.check.after(parent_dir).record(out)
