"""Where each pipeline stage runs: images, node pools, resources and retries (config/deployment/).

The pipeline code stays the same for every cluster; a deployment file says which image and node pool
each stage gets. Everything is validated when the file is loaded, so a typo in a node selector or a
TPU topology fails at `kfopt compile` with one sentence instead of as a pod stuck in Pending.
The optional `targets` section says how many cores each CPU target's serving node has; the benchmark times
the finalists at that thread count (kfopt.finalists).
This module is a plain library (YAML + dataclasses): it does not import kfp.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from kfopt import stages as stage_table
from kfopt.errors import ConfigError, yaml_problem

#: Every task of the kfopt pipeline (from the stage table). A deployment places them; one it does not name
#: runs where its row says (`pool`, `resources`: the cpu pool and the medium profile unless the row says otherwise).
STAGES = stage_table.task_names()

#: Single-host slices per GKE TPU accelerator label (a KFP task is one pod, so one host).
#: Source: GKE "Plan TPUs" reference tables (machine types ct4p/ct5lp/ct5p/ct6e).
TPU_SINGLE_HOST_TOPOLOGIES = {
    "tpu-v4-podslice": ("2x2x1",),
    "tpu-v5-lite-device": ("1x1", "2x2", "2x4"),
    "tpu-v5-lite-podslice": ("1x1", "2x2", "2x4"),
    "tpu-v5p-slice": ("2x2x1",),
    "tpu-v6e-slice": ("1x1", "2x2", "2x4"),
}
TPU_RESOURCE = "google.com/tpu"
TPU_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"

#: Targets served from a CPU (edge is measured on the benchmark node's CPU as a proxy): the deployment file's
#: `targets` says how many cores each one's serving node has, so that the benchmark times the finalists at
#: that thread count and the choice names it. Accelerator targets run at the benchmark's first thread count.
CORE_TARGETS = ("cpu", "edge")
AUTO = "auto"

#: Shipped deployment files; images set KFOPT_DEPLOYMENT_DIR because config/ is not installed.
DEPLOYMENT_DIR = Path(__file__).resolve().parent.parent / "config" / "deployment"

_CPU = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY = re.compile(r"^([0-9]+)(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_DURATION = re.compile(r"^[0-9]+[smhd]$")
_MEMORY_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                 "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
                 "Ei": 2**60}


@dataclass(frozen=True)
class Accelerator:
    """An extended resource the pod asks for, e.g. `nvidia.com/gpu` x 1."""
    resource: str
    count: int


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration for the taint GKE puts on accelerator nodes."""
    key: str
    operator: str
    effect: str
    value: str | None = None


@dataclass(frozen=True)
class Retry:
    """KFP task retry: preemptible (Spot) accelerator nodes vanish mid-task."""
    count: int
    backoff: str
    factor: float
    max_duration: str


@dataclass(frozen=True)
class Resources:
    """CPU and memory requests/limits of one stage's container."""
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclass(frozen=True)
class Pool:
    """A node pool: the image its stages run and how a pod lands on its nodes."""
    name: str
    image: str
    accelerator: Accelerator | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Toleration, ...]
    retry: Retry | None


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its pool and its resources."""
    name: str
    pool: str
    resources: Resources


@dataclass(frozen=True)
class Deployment:
    """A validated deployment file."""
    name: str
    source: Path
    pipeline_root: str | None
    service_account: str | None
    pools: Mapping[str, Pool]
    stages: Mapping[str, Stage]
    cores: Mapping[str, int | str] = dataclasses.field(default_factory=dict)  # target → cores or "auto"

    def cores_for(self, target: str) -> int:
        """The serving node's cores for `target`: the file's number, else (`auto` or not given) this node's."""
        value = self.cores.get(target, AUTO)
        return node_cores() if value == AUTO else int(value)

    def stage(self, stage: str) -> Stage:
        """The placement of `stage`; a ConfigError names the known stages if it is not one."""
        if stage not in self.stages:
            raise ConfigError(f"Stage '{stage}' is not placed by deployment '{self.name}'; "
                              f"use one of: {', '.join(self.stages)}.")
        return self.stages[stage]

    def pool_for(self, stage: str) -> Pool:
        """The node pool `stage` runs on."""
        return self.pools[self.stage(stage).pool]

    def resources_for(self, stage: str) -> Resources:
        """The CPU/memory requests and limits of `stage`."""
        return self.stage(stage).resources

    def image(self, pool_name: str) -> str:
        """The container image of a node pool."""
        if pool_name not in self.pools:
            raise ConfigError(f"Node pool '{pool_name}' is not defined by deployment "
                              f"'{self.name}'; use one of: {', '.join(self.pools)}.")
        return self.pools[pool_name].image

    @property
    def has_accelerators(self) -> bool:
        """True when at least one stage runs on a pool with an accelerator."""
        return any(self.pools[s.pool].accelerator for s in self.stages.values())


def deployment_dir() -> Path:
    """Where deployment names are looked up: $KFOPT_DEPLOYMENT_DIR, else the repo's config/."""
    return Path(os.environ.get("KFOPT_DEPLOYMENT_DIR") or DEPLOYMENT_DIR)


def available() -> list[str]:
    """Names of the deployments in deployment_dir()."""
    return sorted(p.stem for p in deployment_dir().glob("*.yaml"))


def load(name_or_path: str) -> Deployment:
    """Load and validate a deployment by name (config/deployment/<name>.yaml) or by file path."""
    path = _resolve(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"Deployment file {path} is not valid YAML ({yaml_problem(error)}); "
                          "fix its syntax.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Deployment file {path} is not UTF-8 text; pass a YAML file.") from None
    except OSError as error:
        raise ConfigError(f"Cannot read deployment file {path} ({error.strerror}); check its "
                          "permissions.") from None
    return _Parser(path).deployment(raw)


def _resolve(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise ConfigError(f"Deployment file {candidate} does not exist; pass a path to a "
                              f"YAML file or one of the names: {', '.join(available())}.")
        return candidate
    path = deployment_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"Unknown deployment '{name_or_path}'; use one of: "
                          f"{', '.join(available())}, or a path to a YAML file.")
    return path


class _Parser:
    """Turns the raw YAML into dataclasses, naming the exact key of any mistake."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path.name}: '{key}' {problem}.")

    def mapping(self, value: Any, key: str, required: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, not {type(value).__name__}")
        allowed = required + optional
        for name in value:
            if name not in allowed:
                raise self.fail(f"{key}.{name}" if key else name,
                                f"is an unknown key; use one of: {', '.join(allowed)}")
        for name in required:
            if name not in value:
                raise self.fail(f"{key}.{name}" if key else name, "is missing; add it")
        return value

    def typed(self, value: Any, key: str, kind: type | tuple[type, ...]) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(key, f"must be of type {names}, not {type(value).__name__} "
                                 f"({value!r}); quote strings such as \"1\" in YAML")
        return value

    def deployment(self, raw: Any) -> Deployment:
        doc = self.mapping(raw, "", ("registry", "tag", "pools", "resources", "stages"),
                           ("pipeline_root", "service_account", "targets"))
        registry = self.typed(doc["registry"], "registry", str)
        tag = self.typed(doc["tag"], "tag", str)
        pools_raw = self.typed(doc["pools"], "pools", dict)
        if "cpu" not in pools_raw:
            raise self.fail("pools.cpu", "is missing; every deployment needs a cpu pool")
        pools = {name: self.pool(name, spec, registry, tag) for name, spec in pools_raw.items()}
        profiles = {name: self.resources(f"resources.{name}", spec)
                    for name, spec in self.typed(doc["resources"], "resources", dict).items()}
        stages_raw = self.mapping(doc["stages"], "stages", (), STAGES)
        stages = {name: self.stage(name, stages_raw.get(name, stage_table.default_placement(name)), pools, profiles)
                  for name in STAGES}
        root = doc.get("pipeline_root")
        if root is not None and not self.typed(root, "pipeline_root", str).startswith(
                ("gs://", "s3://", "minio://", "/")):
            raise self.fail("pipeline_root", f"({root}) must be a gs://, s3://, minio:// URI")
        account = doc.get("service_account")
        if account is not None:
            self.typed(account, "service_account", str)
        cores = self.targets(doc.get("targets"), stages)
        return Deployment(self.path.stem, self.path, root, account, pools, stages, cores)

    def targets(self, raw: Any, stages: dict[str, Stage]) -> dict[str, int | str]:
        """`targets: {cpu: {cores: 8}, edge: {cores: 4}}`: the serving node's cores per CPU target, at most the
        CPU limit of the benchmark task that times them (a 4-CPU pod cannot show 8 threads' speed)."""
        if raw is None:
            return {}
        spec = self.mapping(raw, "targets", (), CORE_TARGETS)
        out: dict[str, int | str] = {}
        limit = _cpu(stages["benchmark_cpu"].resources.cpu_limit)
        for target, entry in spec.items():
            key = f"targets.{target}.cores"
            value = self.mapping(entry, f"targets.{target}", ("cores",))["cores"]
            if value == AUTO:
                out[target] = AUTO
                continue
            cores = self.typed(value, key, int) if not isinstance(value, str) else None
            if cores is None:
                raise self.fail(key, f"({value!r}) must be a whole number of cores or {AUTO} (this node's)")
            if cores < 1:
                raise self.fail(key, f"is {cores}; a serving node has at least 1 core (or write {AUTO})")
            if cores > limit:
                raise self.fail(key, f"is {cores}, above the cpu_limit ({limit:g}) of benchmark_cpu, which times "
                                     f"the finalists at that many threads; raise the limit or lower cores")
            out[target] = cores
        return out

    def pool(self, name: str, spec: Any, registry: str, tag: str) -> Pool:
        key = f"pools.{name}"
        spec = self.mapping(spec, key, ("image",),
                            ("accelerator", "node_selector", "tolerations", "retry"))
        image = self.image(f"{key}.image", self.typed(spec["image"], f"{key}.image", str),
                           registry, tag)
        accelerator = None
        if spec.get("accelerator") is not None:
            acc = self.mapping(spec["accelerator"], f"{key}.accelerator", ("resource", "count"))
            count = self.typed(acc["count"], f"{key}.accelerator.count", int)
            if count < 1:
                raise self.fail(f"{key}.accelerator.count",
                                f"is {count}; use at least 1, or remove the accelerator")
            accelerator = Accelerator(
                self.typed(acc["resource"], f"{key}.accelerator.resource", str), count)
        selector = self.typed(spec.get("node_selector") or {}, f"{key}.node_selector", dict)
        for label, value in selector.items():
            self.typed(value, f"{key}.node_selector.{label}", str)
        if accelerator and accelerator.resource == TPU_RESOURCE:
            self.tpu(key, accelerator.count, selector)
        tolerations = tuple(self.toleration(f"{key}.tolerations[{i}]", t) for i, t in
                            enumerate(self.typed(spec.get("tolerations") or [],
                                                 f"{key}.tolerations", list)))
        retry = self.retry(f"{key}.retry", spec["retry"]) if spec.get("retry") else None
        return Pool(name, image, accelerator, dict(selector), tolerations, retry)

    def image(self, key: str, template: str, registry: str, tag: str) -> str:
        try:
            image = template.format(registry=registry, tag=tag)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            raise self.fail(key, f"({template}) may only use the placeholders {{registry}} "
                                 "and {tag}") from None
        problem = image_pin_problem(image)
        if problem:
            raise self.fail(key, f"({image}) {problem}")
        return image

    def tpu(self, key: str, count: int, selector: dict) -> None:
        for label in (TPU_ACCELERATOR_LABEL, TPU_TOPOLOGY_LABEL):
            if label not in selector:
                raise self.fail(f"{key}.node_selector.{label}",
                                "is missing; a TPU pool must select its accelerator and topology")
        accelerator = selector[TPU_ACCELERATOR_LABEL]
        topology = selector[TPU_TOPOLOGY_LABEL]
        valid = TPU_SINGLE_HOST_TOPOLOGIES.get(accelerator)
        if valid is None:
            raise self.fail(f"{key}.node_selector.{TPU_ACCELERATOR_LABEL}",
                            f"({accelerator}) is not a known GKE TPU accelerator; use one of: "
                            f"{', '.join(TPU_SINGLE_HOST_TOPOLOGIES)}")
        if topology not in valid:
            raise self.fail(f"{key}.node_selector.{TPU_TOPOLOGY_LABEL}",
                            f"({topology}) is not a single-host topology of {accelerator}; "
                            f"use one of: {', '.join(valid)}")
        chips = 1
        for side in topology.split("x"):
            chips *= int(side)
        if chips != count:
            raise self.fail(f"{key}.accelerator.count",
                            f"is {count} but topology {topology} has {chips} chips; set it "
                            f"to {chips}")

    def toleration(self, key: str, raw: Any) -> Toleration:
        spec = self.mapping(raw, key, ("key", "operator", "effect"), ("value",))
        operator = self.typed(spec["operator"], f"{key}.operator", str)
        effect = self.typed(spec["effect"], f"{key}.effect", str)
        if operator not in ("Exists", "Equal"):
            raise self.fail(f"{key}.operator", f"({operator}) must be Exists or Equal")
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise self.fail(f"{key}.effect", f"({effect}) must be NoSchedule, "
                                             "PreferNoSchedule or NoExecute")
        value = spec.get("value")
        if (operator == "Equal") != (value is not None):
            raise self.fail(f"{key}.value", "must be set with operator Equal and only then")
        return Toleration(self.typed(spec["key"], f"{key}.key", str), operator, effect,
                          None if value is None else self.typed(value, f"{key}.value", str))

    def retry(self, key: str, raw: Any) -> Retry:
        spec = self.mapping(raw, key, ("count", "backoff"), ("factor", "max_duration"))
        count = self.typed(spec["count"], f"{key}.count", int)
        if count < 0:
            raise self.fail(f"{key}.count", f"is {count}; use 0 or more")
        durations = {}
        for name, default in (("backoff", None), ("max_duration", "1h")):
            value = self.typed(spec.get(name, default), f"{key}.{name}", str)
            if not _DURATION.match(value):
                raise self.fail(f"{key}.{name}", f"({value}) must be a duration such as 30s, "
                                                 "5m, 1h or 1d")
            durations[name] = value
        factor = float(self.typed(spec.get("factor", 2.0), f"{key}.factor", (int, float)))
        if factor < 1:
            raise self.fail(f"{key}.factor", f"is {factor}; use 1 or more")
        return Retry(count, durations["backoff"], factor, durations["max_duration"])

    def resources(self, key: str, raw: Any) -> Resources:
        names = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
        spec = self.mapping(raw, key, names)
        for name in names:
            value = self.typed(spec[name], f"{key}.{name}", str)
            pattern = _CPU if name.startswith("cpu") else _MEMORY
            if not pattern.match(value):
                example = "500m or 2" if name.startswith("cpu") else "512Mi or 4Gi"
                raise self.fail(f"{key}.{name}", f"({value}) is not a Kubernetes quantity "
                                                 f"such as {example}")
        if _cpu(spec["cpu_request"]) > _cpu(spec["cpu_limit"]):
            raise self.fail(f"{key}.cpu_request", "is above cpu_limit; lower it or raise the limit")
        if _bytes(spec["memory_request"]) > _bytes(spec["memory_limit"]):
            raise self.fail(f"{key}.memory_request",
                            "is above memory_limit; lower it or raise the limit")
        return Resources(*(spec[name] for name in names))

    def stage(self, name: str, raw: Any, pools: dict, profiles: dict) -> Stage:
        key = f"stages.{name}"
        spec = self.mapping(raw, key, ("pool", "resources"))
        pool = self.typed(spec["pool"], f"{key}.pool", str)
        if pool not in pools:
            raise self.fail(f"{key}.pool", f"names unknown node pool '{pool}'; use one of: "
                                           f"{', '.join(pools)}")
        profile = self.typed(spec["resources"], f"{key}.resources", str)
        if profile not in profiles:
            raise self.fail(f"{key}.resources", f"names unknown resource profile '{profile}'; "
                                                f"use one of: {', '.join(profiles)}")
        return Stage(name, pool, profiles[profile])


def node_cores() -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a pod's cpu limit,
    which the affinity mask does not show)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    return cores if quota == "max" else max(1, min(cores, int(int(quota) // int(period))))


def image_pin_problem(image: str) -> str | None:
    """Why `image` is not pinned to a tag or digest (None when it is): a moving image makes runs
    unreproducible and lets a node run code nobody reviewed."""
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return "has no tag or digest; pin it as name:tag or name@sha256:digest"
    if name.endswith(":latest"):
        return "uses the moving tag 'latest'; pin a version tag"
    return None


def _cpu(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _bytes(value: str) -> int:
    number, unit = _MEMORY.match(value).groups()
    return int(number) * _MEMORY_UNITS[unit]
