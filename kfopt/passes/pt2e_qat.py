"""Quantization-aware training of a torch fp32 program: torchao PT2E QAT, then run by torch.compile.

`prepare_qat_pt2e` with the X86 Inductor quantizer's QAT recipe inserts fake-quantize ops (static int8
activations, per-channel symmetric int8 weights; a convolution's batch norm folded in) into the
program's graph; a short fine-tune on the training split (Adam, `epochs`) lets the weights adapt to
int8 rounding and the observers learn the ranges (the loss: cross-entropy against the fp32 program's own
probabilities, so it learns the rounding, not new answers; the labels would move an undertrained model's
answers away from the baseline the check compares with); `convert_pt2e` turns them into quantize/dequantize
ops. The result is saved and run like PT2E int8 (format torch_pt2e: kfopt.formats.torch_compiled,
Inductor with freezing), so the two rows differ only in how the int8 ranges were found.

It works on the exported graph, not the model's Python code: `move_exported_model_to_train` switches
an exported module's batch norm and dropout to training, which `train()` cannot do. So a brought `.pt2`
gets QAT too, not only kfopt's own models. The loss is on the program's output probabilities
(every torch baseline ends in softmax/sigmoid, kfopt.frameworks.torch). The fine-tune
learns the ranges, so there is no fallback: the result is checked against the baseline and recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kfopt import variant
from kfopt.data import dataset as ds_mod
from kfopt.errors import ConfigError
from kfopt.export import child_meta
from kfopt.formats import torch as torch_fmt
from kfopt.formats import torch_compiled
from kfopt.passes import FINE_TUNE_BATCH, Context, knob, lineage, technique
from kfopt.passes.check import KEY

NAME = "pt2e_qat"
FORMAT, PRECISION, TARGET, TECHNIQUE = "torch_pt2e", "int8", "cpu", "qat"
LEARNING_RATE = 1e-4  # fine-tuning a trained model, as the Keras QAT does
SEED = 1


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the PT2E QAT pass."""

    epochs: int = knob(2, "quantize.qat_epochs", "Fine-tuning epochs of quantization-aware training.")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"qat_epochs must be at least 1, got {self.epochs}.")


def refusal(meta: variant.VariantMeta) -> str | None:
    if meta.format != "torch" or meta.precision != "fp32":
        return f"PT2E QAT trains a torch fp32 program (.pt2); {meta.name} is {meta.format} {meta.precision}"
    return None


def accepts(meta: variant.VariantMeta) -> bool:
    return refusal(meta) is None


def name_for(parent: variant.VariantMeta) -> str:
    return f"{lineage(parent)}pt2e_qat_int8"


def _loss(probs, target, binary: bool):
    """Cross-entropy against the fp32 program's probabilities on the same batch (self-distillation): the
    fine-tune learns int8 rounding without drifting from the answers the check compares with."""
    p = probs.clamp(1e-7, 1 - 1e-7)
    if binary and p.shape[-1] == 1:
        return -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    return -(target * p.log()).sum(-1).mean()


def train(program, ds: ds_mod.Dataset, epochs: int, seed: int = SEED):
    """The program prepared for QAT (X86InductorQuantizer, is_qat), fine-tuned, converted and exported again."""
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    torch.manual_seed(seed)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = prepare_qat_pt2e(program.module(), quantizer)
    move_exported_model_to_train(prepared)
    fixed = torch_fmt.static_batch(program)
    step = fixed or FINE_TUNE_BATCH
    x = torch.from_numpy(np.ascontiguousarray(ds.split("train")[0], np.float32))
    target = torch.from_numpy(torch_fmt.run_module(program.module(), x.numpy(), batch=step, fixed=fixed))
    optimizer = torch.optim.Adam(prepared.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    binary = ds.schema.task == "binary"
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(order) - (len(order) % step if fixed else 0), step):  # a static batch: whole calls
            idx = order[i:i + step]
            optimizer.zero_grad()
            _loss(prepared(x[idx]), target[idx], binary).backward()
            optimizer.step()
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    shape = list(torch_fmt.user_inputs(program)[0].meta["val"].shape)
    example = torch.zeros(fixed or torch_fmt.EXAMPLE_BATCH, *shape[1:])
    dynamic = None if fixed else ({0: torch.export.Dim("batch", min=1)},)
    return torch.export.export(converted, (example,), dynamic_shapes=dynamic)


def run(parent_dir: Path, out_dir: Path, ctx: Context, cfg: Config) -> variant.VariantMeta:
    parent = variant.read(parent_dir)
    program = torch_fmt.load_program(Path(parent_dir) / torch_fmt.FILENAME)
    quantized = train(program, ctx.ds, cfg.epochs)
    out = Path(out_dir)
    torch_fmt.save(quantized, out)
    meta = child_meta(parent, name_for(parent), format=FORMAT, runtime="torch-inductor", precision=PRECISION,
                      target=TARGET, technique=technique(parent, TECHNIQUE),
                      params={"quantizer": "torchao X86InductorQuantizer (QAT: static, per-channel weights)",
                              "mode": "quantization-aware training (prepare_qat_pt2e, convert_pt2e)",
                              "epochs": cfg.epochs, "learning_rate": LEARNING_RATE,
                              "runtime": "torch.compile (inductor, freezing, dynamic=False)"})
    variant.write(out, meta)
    torch_compiled.register_ops()
    meta.extra[KEY] = ctx.check.after(parent_dir).check(out)  # recorded; QAT has no fallback
    return variant.write(out, meta)
