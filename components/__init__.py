"""KFP components, one per row of the stage table (kfopt/stages.py), each a thin shell over one call into kfopt.

A component's typed signature is what the Kubeflow UI shows and what KFP wires; its body is one line,
`execute("<stage>", locals())`. Both come from the stage's row: the parameters from the config fields
its knobs name (their types), the inputs from the upstream stages' outputs, the outputs from the row.
Writing them out by hand per stage was how a setting ended up written seven times.

KFP embeds a lightweight component's source (`inspect.getsource`) in the compiled pipeline, so the
function is made from generated source registered with `linecache` under a readable name; the
compiled YAML shows it like any hand-written component. The image already holds kfp and kfopt, hence
install_kfp_package=False (and no pip installs at run time).
"""

from __future__ import annotations

import linecache
import typing
from typing import Callable

from kfp import dsl

from kfopt import stages

_TYPE_IMPORTS = "from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output"


def _param_type(path: str) -> str:
    tp = stages.config_type(path)
    origin = typing.get_origin(tp)
    return (origin or tp).__name__


def _output_type(source: str) -> str:
    stage_name, _, output = source.partition(".")
    return stages.get(stage_name).outputs[output]


def signature(stage: stages.Stage) -> tuple[list[str], list[str]]:
    """(required, optional) parameter declarations of the stage's component, in KFP's order."""
    required = [f"{key}: {_param_type(path)}" for key, path in stage.knobs.items()]
    for key, source in stage.inputs.items():
        required += [f"{name}: Input[{_output_type(source)}]" for name in stages.input_names(key, source)]
    required.append("code_version: str")
    required += [f"{name}: Output[{kind}]" for name, kind in stage.outputs.items()]
    optional = [f"{key}: Input[{_output_type(source)}] = None" for key, source in stage.optional_inputs.items()]
    optional += [f"{name}: Input[Model] = None" for name, _ in stages.fan_in_sets(stage)]
    return required, optional


def source(stage: stages.Stage, copy: str = "") -> str:
    """The component's source; a stage with copies (the benchmark per hardware) gets one component each."""
    required, optional = signature(stage)
    params = ",\n        ".join(required + optional)
    name = f"{stage.name}_{copy}" if copy else stage.name
    call = f"execute({stage.name!r}, locals(), copy={copy!r})" if copy else f"execute({stage.name!r}, locals())"
    return (f"def {name}(\n        {params}):\n"
            f'    """{name}: {stage.doc}"""\n'
            f"    from kfopt.stages import execute\n\n"
            f"    {call}\n")


def function(stage: stages.Stage, copy: str = "") -> Callable:
    """The component function of `stage`, with a source `inspect.getsource` (hence KFP) can read."""
    name = f"{stage.name}_{copy}" if copy else stage.name
    text = f"{_TYPE_IMPORTS}\n{source(stage, copy)}"
    filename = f"<kfopt component {name}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict = {}
    exec(compile(text, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - made from our stage table
    return namespace[name]


def make(stage: stages.Stage, image: str, copy: str = ""):
    return dsl.component(func=function(stage, copy), base_image=image, install_kfp_package=False)
