"""The kfopt DAG, built from the stage table (kfopt/stages.py). Placement on node pools comes from the deployment.

    preprocess → augment → train → export ─┐
                                   (optimizers, accelerators)
                                           ├→ benchmark_cpu ─┐
                                           ├→ benchmark_gpu ─┼→ report → publish (registry, gate)
                                           └→ benchmark_tpu ─┘

`build(deployment)` returns the @dsl.pipeline function; `kfopt compile` compiles it and `kfopt run`
runs it with kfp.local. Every parameter is typed, has a default and a description (kfopt.config.PARAMS),
so the Kubeflow UI shows a form a user can fill in. Each row of the table becomes one task (one per
hardware for the benchmark), wired to the upstream outputs its row names.
"""

import hashlib
import inspect
from pathlib import Path

from kfp import dsl

import kfopt
from components import make
from kfopt import config as cfg_mod
from kfopt import deployment as deploy_mod
from kfopt import stages
from pipelines import placement

PIPELINE_NAME = "kfopt"


def code_version() -> str:
    """kfopt's version plus a hash of its code: part of every task's cache key.

    KFP's cache key sees only a component's own source and inputs, not the library it calls.
    """
    digest = hashlib.sha256()
    root = Path(kfopt.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.read_bytes())
    return f"{kfopt.__version__}+{digest.hexdigest()[:12]}"


def _docstring() -> str:
    lines = ["Train, optimize, verify, benchmark and choose a model per deployment target.", "", "Args:"]
    lines += [f"    {name}: {desc}" for name, _, desc in cfg_mod.PARAMS]
    return "\n".join(lines)


def _signature() -> inspect.Signature:
    """The pipeline's typed parameters, one per config setting a stage uses, with the defaults of RunConfig."""
    defaults = cfg_mod.pipeline_params(cfg_mod.RunConfig())
    return inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name],
                          annotation=type(defaults[name]))
        for name, _, _ in cfg_mod.PARAMS], return_annotation=dsl.Model)


def _wire(params: dict, deployment: deploy_mod.Deployment, version: str):
    param_of = {path: name for name, path, _ in cfg_mod.PARAMS}
    outputs: dict[str, dict[str, list]] = {}  # stage → output → the tasks' outputs (one per copy)
    for stage in stages.STAGES:
        arguments = {key: params[param_of[path]] for key, path in stage.knobs.items()}
        for key, source in {**stage.inputs, **stage.optional_inputs}.items():
            upstream, _, output = source.partition(".")
            arguments.update(zip(stages.input_names(key, source), outputs[upstream][output]))
        for name, source in stages.fan_in_sets(stage):
            upstream, _, output = source.partition(".")
            arguments[name] = outputs[upstream][output][0]
        produced: dict[str, list] = {name: [] for name in stage.outputs}
        for copy, task_name in zip(stage.copies or [""], stage.task_names()):
            component = make(stage, deployment.pool_for(task_name).image, copy)
            task = component(**arguments, code_version=version)
            task.set_display_name(task_name)
            placement.apply(task, task_name, deployment)
            if not stage.cache:
                task.set_caching_options(False)
            for name in stage.outputs:
                produced[name].append(task.outputs[name])
        outputs[stage.name] = produced
    return outputs["report"]["report_dir"][0]


def build(deployment: "deploy_mod.Deployment | None" = None):
    deployment = deployment or deploy_mod.load("cpu-only")
    version = code_version()
    signature = _signature()
    names = list(signature.parameters)

    def kfopt_pipeline(*args) -> dsl.Model:
        return _wire(dict(zip(names, args)), deployment, version)

    kfopt_pipeline.__signature__ = signature
    kfopt_pipeline.__annotations__ = {**{n: p.annotation for n, p in signature.parameters.items()},
                                      "return": dsl.Model}
    kfopt_pipeline.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=_docstring().splitlines()[0])(kfopt_pipeline)
