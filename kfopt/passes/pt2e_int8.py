"""PT2E int8 of a torch fp32 variant: torchao's X86InductorQuantizer, calibrated, run by torch.compile.

The variant's program (kfopt's own module or a brought `.pt2`: PT2E works on the exported graph, so
it needs no Python code of the model) goes through `prepare_pt2e` with the X86 Inductor quantizer's
default recipe (static int8 activations, per-channel symmetric int8 weights), sees the stage's
calibration samples (drawn from the training split), and `convert_pt2e` folds the observers into
quantize/dequantize ops. The result is exported again with a dynamic batch and saved as a `.pt2`;
kfopt.formats.torch_compiled compiles it with Inductor (freezing), which turns those patterns into int8
kernels. The in-stage check compares it with the baseline on the validation split like every pass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kfopt import variant
from kfopt.export import child_meta
from kfopt.formats import torch as torch_fmt
from kfopt.formats import torch_compiled
from kfopt.passes import Context, lineage, technique

NAME = "pt2e_int8"
FORMAT, PRECISION, TARGET, TECHNIQUE = "torch_pt2e", "int8", "cpu", "quantize"
CALIBRATION_BATCH = 32


@dataclasses.dataclass(frozen=True)
class Config:
    """The PT2E int8 pass has no settings of its own: calibration samples come from the stage (Context)."""


def refusal(meta: variant.VariantMeta) -> str | None:
    if meta.format != "torch" or meta.precision != "fp32":
        return f"PT2E int8 quantizes a torch fp32 program (.pt2); {meta.name} is {meta.format} {meta.precision}"
    return None


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}{NAME}"


def quantize(program, samples: np.ndarray, batch: int):
    """The program quantized by PT2E (X86InductorQuantizer), calibrated on `samples`, exported again."""
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(program.module(), quantizer)
    fixed = torch_fmt.static_batch(program)
    torch_fmt.run_module(prepared, samples, batch=batch, fixed=fixed, mode=torch.no_grad)
    converted = convert_pt2e(prepared)
    shape = list(torch_fmt.user_inputs(program)[0].meta["val"].shape)
    example = torch.zeros(fixed or torch_fmt.EXAMPLE_BATCH, *shape[1:])
    dynamic = None if fixed else ({0: torch.export.Dim("batch", min=1)},)
    return torch.export.export(converted, (example,), dynamic_shapes=dynamic)


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    parent = variant.read(parent_dir)
    program = torch_fmt.load_program(Path(parent_dir) / torch_fmt.FILENAME)
    quantized = quantize(program, ctx.samples, CALIBRATION_BATCH)
    out = Path(out_dir)
    torch_fmt.save(quantized, out)
    meta = child_meta(parent, name_for(parent), format=FORMAT, runtime="torch-inductor", precision=PRECISION,
                      target=TARGET, technique=technique(parent, TECHNIQUE),
                      params={"quantizer": "torchao X86InductorQuantizer (default: static, per-channel weights)",
                              "calibration_samples": int(len(ctx.samples)),
                              "runtime": "torch.compile (inductor, freezing, dynamic=False)"})
    variant.write(out, meta)
    torch_compiled.register_ops()
    return ctx.check.after(parent_dir).record(out)
