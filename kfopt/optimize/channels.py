"""Which channel counts of a Keras model can shrink together: the width plan of a distillation student.

Scaling every layer's filters/units by the same factor breaks any model where a channel count is
tied to another one: a residual Add of a block's input and its projection, a squeeze-excite
Multiply, a `Reshape((1, 1, C))` whose C sits in the layer's config (EfficientNet), a head that
must keep the classes, an input whose channels are the data's. So the plan works on the teacher's
graph, not on its layer list: tensors whose last dimension must stay equal are joined into one
group (through every layer that keeps the channel count: Add, Multiply, BatchNormalization,
pooling, Activation, Reshape…), and a group is scaled as a whole, or kept whole when it touches
something that cannot change — a model input or output, a nested model, or a layer whose config
holds the count without it being one of the scaled keys.

The plan names the layers whose width key is scaled and the Reshape layers whose target's channel
dimension follows. Anything it cannot see (Concatenate sums rounded differently than the layer it
is added to, say) surfaces when the student is built, as an error naming the layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from kfopt.models.architectures import scaled

#: Config keys that set a layer's output width (Conv*/SeparableConv*/Dense/recurrent/Embedding).
WIDTH_KEYS = ("filters", "units", "output_dim")


def width_key(config: dict[str, Any]) -> str | None:
    return next((k for k in WIDTH_KEYS if type(config.get(k)) is int), None)


@dataclasses.dataclass
class Plan:
    """Layer name → its width key and teacher value (scaled), and Reshape name → channel count."""

    widths: dict[str, tuple[str, int]]
    reshapes: dict[str, int]

    def apply(self, layer_config: dict[str, Any], width: float) -> None:
        """Rewrite one layer's config (in place) for the student at `width`."""
        name = layer_config.get("name")
        if name in self.widths:
            key, value = self.widths[name]
            layer_config[key] = scaled(value, width)
            if value > 1 and layer_config.get("groups") == value:  # a depthwise conv written as Conv2D(groups=C)
                layer_config["groups"] = layer_config[key]
        elif name in self.reshapes:
            target = list(layer_config["target_shape"])
            target[-1] = scaled(self.reshapes[name], width)
            layer_config["target_shape"] = tuple(target)


def _ints(value: Any) -> Iterator[int]:
    if type(value) is int:
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _ints(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _ints(item)


def _flat(value: Any) -> list:
    return [t for item in value for t in _flat(item)] if isinstance(value, (list, tuple)) else [value]


def _channels(tensor) -> int | None:
    shape = tensor.shape
    return shape[-1] if shape.rank else None


def plan(model) -> Plan:
    """The width plan of a Sequential or functional tf-keras `model` (see the module docstring)."""
    from kfopt.tfenv import keras

    k = keras()
    parent: dict[int, int] = {}

    def find(t: int) -> int:
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def tie(a, b) -> None:
        parent[find(id(a))] = find(id(b))

    producers: dict[int, tuple[str, str, int]] = {}  # tensor id → (layer, key, teacher value)
    reshapes: dict[str, Any] = {}  # layer → its output tensor
    pinned: list = list(_flat(model.inputs)) + list(_flat(model.outputs))
    for nodes in model._nodes_by_depth.values():  # noqa: SLF001 - tf-keras' graph, the one structure we need
        for node in nodes:
            layer, ins, outs = node.layer, _flat(node.keras_inputs), _flat(node.outputs)
            if node.is_input:
                continue
            config = layer.get_config()
            key = width_key(config)
            if isinstance(layer, k.Model):  # a nested model keeps its widths: everything it touches stays
                pinned += ins + outs
            elif key is not None:
                producers.update({id(out): (layer.name, key, config[key]) for out in outs})
            else:
                for out in outs:
                    channels = _channels(out)
                    tied = [t for t in ins if channels is not None and _channels(t) == channels]
                    for t in tied:
                        tie(t, out)
                    if isinstance(layer, k.layers.Reshape):
                        if tied and list(config["target_shape"])[-1] == channels:
                            reshapes[layer.name] = out
                    elif channels in set(_ints(config)) and channels > 1:  # a count we would not rewrite
                        pinned.append(out)
    frozen = {find(id(t)) for t in pinned}
    widths = {name: (key, value) for t, (name, key, value) in producers.items() if find(t) not in frozen}
    return Plan(widths, {name: _channels(out) for name, out in reshapes.items() if find(id(out)) not in frozen})
