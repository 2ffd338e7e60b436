"""Typed run configuration, loaded from YAML (config/*.yaml) and validated with clear errors.

The same settings are the pipeline's parameters: `pipeline_params(cfg)` flattens the configuration
into the typed parameters a user sets in the Kubeflow UI (see PARAMS), so `kfopt run --config`,
`kfopt compile --config` and the UI agree on names, types and defaults.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from kfopt.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"


@dataclasses.dataclass
class DataConfig:
    source: str = "digits"  # bundled name (digits, breast_cancer) or a CSV/NPZ path or gs:// URI
    label_column: str = "label"  # for CSV input
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 42
    min_samples: int = 50
    limit: int = 0  # keep only this many samples (stratified); 0 keeps all
    # auto | standardize | none. auto: standardize (train statistics) for a model kfopt trains; none (the data
    # exactly as given) for a brought model (model.uri). Resolved in the preprocess stage, recorded in schema.json.
    normalize: str = "auto"


@dataclasses.dataclass
class AugmentConfig:
    enabled: bool = True
    factor: float = 1.0  # augmented copies per training sample (0.5 = half the samples once)
    seed: int = 7
    max_shift: int = 1  # pixels, images only
    max_rotation: float = 10.0  # degrees, images only
    noise_std: float = 0.03  # in normalized feature units


@dataclasses.dataclass
class ModelConfig:
    architecture: str = "digits_cnn"
    uri: str = ""  # an already trained model (.keras, SavedModel, .pt2, .onnx); skips training
    framework: str = "keras"  # keras | torch: which framework kfopt builds and trains `architecture` in


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 0.001
    patience: int = 4
    mixed_precision: str = "none"  # none | mixed_bfloat16
    seed: int = 1
    workers: int = 1  # data-parallel worker processes (torch: DistributedDataParallel via torch.distributed.run)
    engine: str = "local"  # local: torch.distributed.run in the stage's pod | trainjob: a Kubeflow Trainer TrainJob
    namespace: str = "kfopt"  # namespace of the TrainJob (engine: trainjob)
    timeout_s: float = 3600.0  # how long the stage waits for the TrainJob to complete


@dataclasses.dataclass
class ExportConfig:
    tflite: bool = True
    onnx: bool = True
    opset: int = 17


@dataclasses.dataclass
class QuantizeConfig:
    enabled: bool = True
    calibration_samples: int = 200  # samples, not batches; more than the train split: clamped, with a warning
    qat: bool = True  # quantization-aware training (tfmot), then int8 TFLite
    qat_epochs: int = 2
    fallback_max_attempts: int = 3  # int8 retries with the worst layers kept in float (0: no fallback)
    ort_search: list[str] = dataclasses.field(default_factory=lambda: [  # ORT int8 settings tried (kfopt.passes.ort_int8)
        "QDQ S8S8 per-channel MinMax", "QOperator U8U8 per-channel Percentile", "QOperator U8S8 per-channel MinMax"])


@dataclasses.dataclass
class PruneConfig:
    enabled: bool = True
    sparsities: list[float] = dataclasses.field(default_factory=lambda: [0.3, 0.5, 0.7, 0.8, 0.9])  # searched
    epochs: int = 8  # most fine-tuning epochs: a ramp to the sparsity, then recovery to early stopping


@dataclasses.dataclass
class DistillConfig:
    enabled: bool = True
    # widths searched (filters/units relative to the teacher's, each in (0, 1)): the narrowest passing student kept
    student_width: list[float] = dataclasses.field(default_factory=lambda: [0.75, 0.5, 0.25])
    temperature: float = 4.0
    alpha: float = 0.1  # weight of the hard-label loss; 1 - alpha goes to matching the teacher
    epochs: int = 30  # the most a student trains; early stopping on the validation loss may end it sooner
    patience: int = 5  # epochs without a lower validation loss before it stops (the rate halves every 2)


@dataclasses.dataclass
class SearchConfig:
    time_budget_s: float = 60.0  # per search of a stage: no new point starts after this (kfopt.search)


@dataclasses.dataclass
class TensorRTConfig:
    enabled: bool = True
    min_batch: int = 1  # the engine's dynamic-batch optimization profile: min <= opt <= max
    opt_batch: int = 64
    max_batch: int = 256
    workspace_mb: int = 1024  # builder workspace limit
    fp16: bool = True  # trt_fp16 from onnx_fp32 converted to float16
    int8: bool = True  # trt_int8 from the quantize stage's symmetric-QDQ ONNX


@dataclasses.dataclass
class OpenVINOConfig:
    enabled: bool = True  # IR fp32 + NNCF int8 of every ONNX fp32 variant (settings: kfopt.passes.openvino.Config)


@dataclasses.dataclass
class XlaConfig:
    enabled: bool = True
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 64])  # one compiled program each


@dataclasses.dataclass
class BenchConfig:
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 64])
    # intra-op thread counts (0 = runtime default): every variant is timed at the first (the ORT int8 search too);
    # each target's finalists also at the rest and at the serving node's cores (deployment file `targets`)
    threads: list[int] = dataclasses.field(default_factory=lambda: [1])
    finalists: int = 2  # per target: the fastest verified variants timed at more threads (and swept); 0: none
    saturation_gain: float = 0.05  # throughput:<B> sweep: a doubling must raise throughput by more than this ...
    saturation_steps: int = 2  # ... or, after this many such doublings in a row, the sweep stops
    warmup: int = 20
    min_runs: int = 30
    max_seconds: float = 2.0  # per variant and batch size
    target_ci: float = 0.02  # stop once the median's 95% CI is within ±2%


@dataclasses.dataclass
class VerifyConfig:
    accuracy_budget: float = 0.5  # percentage points of test accuracy a variant may lose
    min_agreement: float = 0.97  # top-1 agreement with the baseline's predictions
    confidence: float = 0.95  # of the paired interval of the accuracy delta: only a confident loss is rejected


@dataclasses.dataclass
class SelectConfig:
    targets: list[str] = dataclasses.field(default_factory=lambda: ["cpu", "edge", "gpu", "tpu"])
    # objective per target: latency:<batch> | throughput:<largest batch> (swept up to it) | size
    objectives: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "cpu": "latency:1", "edge": "size", "gpu": "throughput:64", "tpu": "throughput:64"})


@dataclasses.dataclass
class PublishConfig:
    enabled: bool = True
    registry: str = ""  # folder or gs:// URI; empty: <runs dir>/registry locally, <pipeline root bucket>/registry
    model_name: str = ""  # empty: a brought model's file/folder name, else the config's name (publish.resolve_name)
    accuracy_tolerance_pp: float = 0.5  # a new model may be this much less accurate than the promoted one
    latency_tolerance: float = 0.10  # ... and this much slower (relative, same environment only)


@dataclasses.dataclass
class DeployConfig:
    enabled: bool = False  # a KServe InferenceService per promoted target (kfopt.deploy); needs KServe and RBAC
    apply: bool = True  # false: only write the manifests into the registry (GitOps)
    namespace: str = "kfopt"
    canary_percent: int = 100  # traffic share of an updated model (KServe Serverless mode only); 100: no canary
    timeout_s: float = 600.0  # per InferenceService, until Ready
    mode: str = "Serverless"  # KServe deployment mode: Serverless (Knative, canaries) or RawDeployment
    deployment: str = ""  # deployment file whose node pools serve the models; empty: the one compiled with
    triton_version: str = "25.06-py3"  # Triton runtime image tag (KServe runtimeVersion) for ONNX and TensorRT
    triton_tensorrt: str = "10.11"  # the TensorRT in that image: a TensorRT plan must have been built with it


@dataclasses.dataclass
class RunConfig:
    name: str = "digits_cnn"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    quantize: QuantizeConfig = dataclasses.field(default_factory=QuantizeConfig)
    prune: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    tensorrt: TensorRTConfig = dataclasses.field(default_factory=TensorRTConfig)
    xla: XlaConfig = dataclasses.field(default_factory=XlaConfig)
    openvino: OpenVINOConfig = dataclasses.field(default_factory=OpenVINOConfig)
    verify: VerifyConfig = dataclasses.field(default_factory=VerifyConfig)
    bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    publish: PublishConfig = dataclasses.field(default_factory=PublishConfig)
    deploy: DeployConfig = dataclasses.field(default_factory=DeployConfig)
    deployment: str = "cpu-only"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}.")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {_type_name(item_tp)}, got {value!r}.")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1000 else math.inf
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{where} must be {_type_name(tp)}, got {type(value).__name__} {value!r}.")
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}.")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}.")  # a programming error, kept loud


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the configuration'} must be a mapping of keys to values, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in raw if key not in fields]  # keys may be of any type YAML allows
    if unknown:
        section = f"section '{where}'" if where else "the top level"
        raise ConfigError(f"Unknown config key {unknown[0]!r} in {section}; known keys: {', '.join(fields)}.")
    values = {}
    for key, value in raw.items():
        tp = hints[key]
        path = f"{where}.{key}" if where else key
        values[key] = _build(tp, value, path) if dataclasses.is_dataclass(tp) else _coerce(value, tp, path)
    return cls(**values)


def thread_counts(threads: int | list[int] | tuple[int, ...]) -> list[int]:
    """`bench.threads` as a list: the old form, one count (`threads: 2`), reads as `[2]`."""
    return [threads] if isinstance(threads, int) else list(threads)


def from_dict(raw: dict) -> RunConfig:
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict) and isinstance(data.get("normalize"), bool):  # the old switch: true meant standardize
        raw = {**raw, "data": {**data, "normalize": "standardize" if data["normalize"] else "none"}}
    distill = raw.get("distill") if isinstance(raw, dict) else None
    width = distill.get("student_width") if isinstance(distill, dict) else None
    if isinstance(width, (int, float)) and not isinstance(width, bool):  # the old form: one width, not a search
        raw = {**raw, "distill": {**distill, "student_width": [width]}}
    bench = raw.get("bench") if isinstance(raw, dict) else None
    threads = bench.get("threads") if isinstance(bench, dict) else None
    if isinstance(threads, int) and not isinstance(threads, bool):  # the old form: one thread count
        raw = {**raw, "bench": {**bench, "threads": thread_counts(threads)}}
    cfg = _build(RunConfig, raw, "")
    if not cfg.publish.model_name and not cfg.model.uri and cfg.name != cfg.model.architecture:
        cfg.publish.model_name = cfg.name  # else left empty: the stages name it (kfopt.publish.resolve_name)
    cfg.deploy.deployment = cfg.deploy.deployment or cfg.deployment  # the deploy stage places predictors by it
    validate(cfg)
    return cfg


def resolve_path(name_or_path: str | Path) -> Path:
    """`digits_cnn` → config/digits_cnn.yaml; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"Config file {path} does not exist; shipped configs: {', '.join(shipped)}.")
    return path


def load(name_or_path: str | Path) -> RunConfig:
    path = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def validate(cfg: RunConfig) -> None:
    def check(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    d, t, a, b = cfg.data, cfg.train, cfg.augment, cfg.bench
    check(0 < d.val_fraction < 0.5, f"data.val_fraction must be in (0, 0.5), got {d.val_fraction}.")
    check(0 < d.test_fraction < 0.5, f"data.test_fraction must be in (0, 0.5), got {d.test_fraction}.")
    check(d.val_fraction + d.test_fraction < 0.8, "data.val_fraction + data.test_fraction must leave at least 20% for training.")
    check(d.limit >= 0, f"data.limit must be 0 (all) or a positive sample count, got {d.limit}.")
    check(d.normalize in ("auto", "standardize", "none"),
          f"data.normalize must be auto, standardize or none, got {d.normalize!r}.")
    check(t.epochs >= 1, f"train.epochs must be at least 1, got {t.epochs}.")
    check(t.batch_size >= 1, f"train.batch_size must be at least 1, got {t.batch_size}.")
    check(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}.")
    check(t.workers >= 1, f"train.workers must be at least 1, got {t.workers}.")
    check(t.engine in ("local", "trainjob"), f"train.engine must be local or trainjob, got {t.engine!r}.")
    check(t.timeout_s > 0, f"train.timeout_s must be positive, got {t.timeout_s}.")
    check(t.workers <= t.batch_size, f"train.workers ({t.workers}) is more than train.batch_size ({t.batch_size}), "
          "the global batch split over the workers, so some workers would get no sample a step; use fewer workers.")
    check(t.batch_size % t.workers == 0, f"train.batch_size ({t.batch_size}) is the global batch and must be a "
          f"multiple of train.workers ({t.workers}); change one of them.")
    check(t.mixed_precision in ("none", "mixed_bfloat16", "mixed_float16"),
          f"train.mixed_precision must be none, mixed_bfloat16 or mixed_float16, got {t.mixed_precision!r}.")
    _validate_optimize(cfg)
    check(a.factor >= 0, f"augment.factor must be >= 0, got {a.factor}.")
    check(a.max_shift >= 0, f"augment.max_shift must be >= 0 pixels, got {a.max_shift}.")
    check(0 <= a.max_rotation <= 180, f"augment.max_rotation must be in [0, 180] degrees, got {a.max_rotation}.")
    check(a.noise_std >= 0, f"augment.noise_std must be >= 0, got {a.noise_std}.")
    check(d.min_samples >= 10, f"data.min_samples must be at least 10 (the splits need samples), got {d.min_samples}.")
    check(b.warmup >= 0, f"bench.warmup must be >= 0, got {b.warmup}.")
    check(b.min_runs >= 1, f"bench.min_runs must be at least 1, got {b.min_runs}.")
    check(0 < b.target_ci < 1, f"bench.target_ci must be in (0, 1) (relative half-width), got {b.target_ci}.")
    check(b.max_seconds > 0, f"bench.max_seconds must be positive, got {b.max_seconds}.")
    check(bool(b.batch_sizes) and all(x >= 1 for x in b.batch_sizes), f"bench.batch_sizes must be positive integers, got {b.batch_sizes}.")
    check(bool(b.threads) and all(x >= 0 for x in b.threads),
          f"bench.threads must be a non-empty list of thread counts >= 0 (0 = runtime default), got {b.threads}.")
    check(b.finalists >= 0, f"bench.finalists must be >= 0 (0: time every variant at bench.threads[0] only), "
          f"got {b.finalists}.")
    check(0 < b.saturation_gain < 1, f"bench.saturation_gain must be in (0, 1) (relative throughput gain), "
          f"got {b.saturation_gain}.")
    check(b.saturation_steps >= 1, f"bench.saturation_steps must be at least 1, got {b.saturation_steps}.")
    r = cfg.tensorrt
    check(1 <= r.min_batch <= r.opt_batch <= r.max_batch,
          f"tensorrt: the batch profile needs 1 <= min_batch <= opt_batch <= max_batch, got min_batch "
          f"{r.min_batch}, opt_batch {r.opt_batch}, max_batch {r.max_batch}.")
    check(r.workspace_mb >= 1, f"tensorrt.workspace_mb must be at least 1, got {r.workspace_mb}.")
    check(bool(cfg.xla.batch_sizes) and all(x >= 1 for x in cfg.xla.batch_sizes),
          f"xla.batch_sizes must be positive integers (one compiled program each), got {cfg.xla.batch_sizes}.")
    from kfopt import select

    for target in cfg.select.targets + list(cfg.select.objectives):
        check(target in select.TARGET_HARDWARE,
              f"select: unknown deployment target {target!r}; known: {', '.join(select.TARGET_HARDWARE)}.")
    for objective in cfg.select.objectives.values():
        select.parse_objective(objective)
    p = cfg.publish
    check(p.accuracy_tolerance_pp >= 0, f"publish.accuracy_tolerance_pp must be >= 0, got {p.accuracy_tolerance_pp}.")
    check(p.latency_tolerance >= 0, f"publish.latency_tolerance must be >= 0 (relative), got {p.latency_tolerance}.")
    from kfopt.publish import check_name

    check_name(p.model_name or cfg.name)
    from kfopt.models.architectures import ARCHITECTURES  # light module: no TensorFlow at import

    check(cfg.model.framework in ("keras", "torch"),
          f"model.framework must be keras or torch, got {cfg.model.framework!r}.")
    if cfg.model.framework == "torch" and not cfg.model.uri:
        from kfopt.models.torch_architectures import check as check_torch  # light module: no torch at import

        check_torch(cfg.model.architecture)
    check(bool(cfg.model.uri) or cfg.model.architecture in ARCHITECTURES,
          f"Unknown model architecture {cfg.model.architecture!r}; known: {', '.join(ARCHITECTURES)}.")


def _validate_optimize(cfg: RunConfig) -> None:
    """The budget and optimize settings, checked by the stages' own rules (light modules, no TensorFlow)."""
    q, p, d = cfg.quantize, cfg.prune, cfg.distill
    if q.calibration_samples < 1:
        raise ConfigError(f"quantize.calibration_samples must be at least 1, got {q.calibration_samples}.")
    if q.qat_epochs < 1:
        raise ConfigError(f"quantize.qat_epochs must be at least 1, got {q.qat_epochs}.")
    from kfopt.optimize import checks

    checks.budget(cfg.verify.accuracy_budget, cfg.verify.min_agreement, q.fallback_max_attempts)
    from kfopt import stats

    stats.check_confidence(cfg.verify.confidence)
    from kfopt.passes import ort_int8

    ort_int8.Config(search=tuple(q.ort_search))  # each entry parses, or one message naming it and the form
    checks.prune(p.sparsities, p.epochs)
    from kfopt import search

    search.check_budget(cfg.search.time_budget_s)
    checks.distill(d.student_width, d.temperature, d.alpha, d.epochs, d.patience)


# Pipeline parameters: (parameter name, config path, description). The pipeline function in
# pipelines/kfopt_pipeline.py declares exactly these (tests/test_pipeline_compile.py checks it).
PARAMS: list[tuple[str, str, str]] = [
    ("data_uri", "data.source", "Dataset: a bundled name (digits, breast_cancer) or a CSV/NPZ path or gs:// URI."),
    ("label_column", "data.label_column", "Name of the label column when the data is a CSV."),
    ("val_fraction", "data.val_fraction", "Fraction of samples held out for validation (early stopping)."),
    ("test_fraction", "data.test_fraction", "Fraction of samples held out for the test split (accuracy, verification)."),
    ("split_seed", "data.seed", "Seed of the stratified train/val/test split."),
    ("sample_limit", "data.limit", "Keep only this many samples (stratified); 0 keeps all."),
    ("min_samples", "data.min_samples", "Fewest samples (after sample_limit) the dataset may have; fewer is an error."),
    ("normalize", "data.normalize", "auto, standardize or none. auto: standardize (training-split statistics) for a model kfopt trains, none (data exactly as given) when model_uri is set."),
    ("augment_enabled", "augment.enabled", "Augment the training split."),
    ("augment_factor", "augment.factor", "Augmented copies per training sample."),
    ("augment_seed", "augment.seed", "Seed of the augmentation."),
    ("augment_max_shift", "augment.max_shift", "Largest shift in pixels of an augmented image (images only)."),
    ("augment_max_rotation", "augment.max_rotation", "Largest rotation in degrees of an augmented image (images only)."),
    ("augment_noise_std", "augment.noise_std", "Standard deviation of the Gaussian noise added to augmented samples (normalized units)."),
    ("model_architecture", "model.architecture", "Model architecture to train (digits_cnn, breast_cancer_mlp, ...)."),
    ("framework", "model.framework", "keras or torch: the framework kfopt trains model_architecture in (ignored when model_uri is set: a brought model's own framework is read from its file)."),
    ("model_uri", "model.uri", "An already trained model, local or gs://: Keras (.keras or SavedModel folder), torch.export (.pt2) or ONNX (.onnx); empty trains one."),
    ("epochs", "train.epochs", "Maximum training epochs (early stopping on validation loss)."),
    ("batch_size", "train.batch_size", "Training batch size."),
    ("learning_rate", "train.learning_rate", "Adam learning rate."),
    ("patience", "train.patience", "Early-stopping patience in epochs."),
    ("mixed_precision", "train.mixed_precision", "none, mixed_bfloat16 (bf16 autocast; faster for Keras on this CPU, slower for torch: measure with bench/train_bench.py) or mixed_float16 (GPU)."),
    ("train_seed", "train.seed", "Seed of weight initialisation and shuffling."),
    ("train_workers", "train.workers", "Data-parallel training workers (torch: DistributedDataParallel; Keras: MultiWorkerMirroredStrategy; batch_size is the global batch). 1 trains in the stage's own process."),
    ("train_engine", "train.engine", "Where train_workers > 1 trains: local (worker processes in the train stage's pod) or trainjob (a Kubeflow Trainer TrainJob on the deployment's gpu pool, on the runtime torch-distributed for torch and on kfopt-tensorflow-distributed for Keras)."),
    ("train_namespace", "train.namespace", "Namespace of the TrainJob (train_engine trainjob)."),
    ("train_timeout_s", "train.timeout_s", "Seconds the train stage waits for its TrainJob to complete."),
    ("export_tflite", "export.tflite", "Export the baseline as a float32 TFLite variant."),
    ("export_onnx", "export.onnx", "Export the baseline as a float32 ONNX variant."),
    ("onnx_opset", "export.opset", "ONNX opset of exported graphs."),
    ("quantize_enabled", "quantize.enabled", "Make quantized variants (TFLite dynamic/float16/int8, ORT static int8 QDQ)."),
    ("calibration_samples", "quantize.calibration_samples", "Training samples (not batches) for int8 calibration; more than the split is clamped with a warning."),
    ("qat_enabled", "quantize.qat", "Quantization-aware training (tfmot) then int8 TFLite."),
    ("qat_epochs", "quantize.qat_epochs", "Fine-tuning epochs of quantization-aware training."),
    ("ort_search", "quantize.ort_search", "ORT int8 settings searched, the fastest that passes the in-stage check kept (JSON list, e.g. [\"QOperator U8U8 per-channel Percentile\"]; []: QDQ S8S8 only)."),
    ("fallback_max_attempts", "quantize.fallback_max_attempts", "Int8 retries keeping the most harmful layers in float when the accuracy budget is missed (0: none)."),
    ("prune_enabled", "prune.enabled", "Make magnitude-pruned variants (and their int8 TFLite)."),
    ("prune_sparsities", "prune.sparsities", "Sparsities searched (bisection), each in (0, 1): the most aggressive passing the in-stage check is kept (JSON list, e.g. [0.5, 0.8])."),
    ("prune_epochs", "prune.epochs", "Most fine-tuning epochs per sparsity tried: a quarter ramps the masks to it, the rest recover to early stopping."),
    ("distill_enabled", "distill.enabled", "Distill the baseline into a smaller student (and its int8 TFLite)."),
    ("student_width", "distill.student_width", "Student widths searched (filters/units relative to the teacher, each in (0, 1); JSON list, e.g. [0.75, 0.5, 0.25]): bisection from the widest keeps the narrowest student that passes the in-stage check."),
    ("distill_temperature", "distill.temperature", "Distillation temperature (softens both distributions)."),
    ("distill_alpha", "distill.alpha", "Weight of the hard-label loss in [0, 1]; the rest matches the teacher."),
    ("distill_epochs", "distill.epochs", "Most epochs a student trains (early stopping on the validation loss, best weights kept)."),
    ("distill_patience", "distill.patience", "Epochs without a lower validation loss before a student's training stops; the learning rate halves every patience/2 of them."),
    ("search_time_budget_s", "search.time_budget_s", "Seconds each search of a stage may spend (ORT int8 settings, sparsity, student width; each search runs at least its first point); no new point starts after it."),
    ("tensorrt_enabled", "tensorrt.enabled", "Build TensorRT engines (GPU pool; a parse/build proof or skipped without a GPU)."),
    ("tensorrt_min_batch", "tensorrt.min_batch", "Smallest batch of the TensorRT engines' optimization profile."),
    ("tensorrt_opt_batch", "tensorrt.opt_batch", "Batch the TensorRT engines are tuned for (min <= opt <= max)."),
    ("tensorrt_max_batch", "tensorrt.max_batch", "Largest batch of the TensorRT engines' optimization profile."),
    ("tensorrt_workspace_mb", "tensorrt.workspace_mb", "TensorRT builder workspace limit in MiB."),
    ("tensorrt_fp16", "tensorrt.fp16", "Build trt_fp16 from the fp32 ONNX converted to float16."),
    ("tensorrt_int8", "tensorrt.int8", "Build trt_int8 from the quantize stage's symmetric-QDQ int8 ONNX."),
    ("xla_enabled", "xla.enabled", "Compile the baseline into XLA programs (TPU pool; verified on CPU without a TPU)."),
    ("xla_batch_sizes", "xla.batch_sizes", "Batch sizes of the XLA programs, one compiled program each (JSON list)."),
    ("openvino_enabled", "openvino.enabled", "Make OpenVINO IR variants (fp32 and NNCF int8) of the ONNX fp32 variants, verified at every benchmarked batch size."),
    ("accuracy_budget", "verify.accuracy_budget", "Accuracy (percentage points) a variant may lose vs the baseline and still be chosen."),
    ("min_agreement", "verify.min_agreement", "Minimum top-1 agreement with the baseline's predictions."),
    ("verify_confidence", "verify.confidence", "Confidence (in (0.5, 1)) of the paired bootstrap interval of each accuracy delta: a variant is rejected for accuracy only when the whole interval loses more than accuracy_budget; an interval straddling it is reported as too few rows to tell."),
    ("bench_batch_sizes", "bench.batch_sizes", "Batch sizes to benchmark (JSON list)."),
    ("bench_threads", "bench.threads", "Intra-op thread counts (JSON list; 0 = runtime default): every variant is timed at the first (so is the ORT int8 search), each target's finalists also at the others and at the serving node's cores (the deployment file's targets)."),
    ("bench_finalists", "bench.finalists", "Per target, the fastest verified variants (at the first thread count) timed again at the serving node's cores and, for throughput:<B>, swept over batch sizes 1, 2, 4, ... up to B; 0: none."),
    ("bench_saturation_gain", "bench.saturation_gain", "Batch sweep: a doubling must raise throughput by more than this (relative) over the best so far (Triton Model Navigator's throughput cutoff, 0.05)."),
    ("bench_saturation_steps", "bench.saturation_steps", "Batch sweep: stop after this many doublings in a row below saturation_gain (Model Navigator's backoff limit, 2)."),
    ("bench_max_seconds", "bench.max_seconds", "Time limit per variant and batch size for the timed runs."),
    ("bench_warmup", "bench.warmup", "Untimed warm-up runs per variant and batch size."),
    ("bench_min_runs", "bench.min_runs", "Fewest timed runs per variant and batch size."),
    ("bench_target_ci", "bench.target_ci", "Stop timing once the median's 95% confidence interval is within this relative width."),
    ("targets", "select.targets", "Deployment targets to choose a variant for (JSON list of cpu, edge, gpu, tpu)."),
    ("objectives", "select.objectives", "Objective per target: latency:<batch>, throughput:<batch> (the most samples/s at any batch up to it: the finalists are swept) or size (JSON object)."),
    ("publish_enabled", "publish.enabled", "Publish the run into the model registry, behind the regression gate."),
    ("registry", "publish.registry", "Model registry root: a gs:// URI (or a folder); empty: gs://<pipeline root's bucket>/registry."),
    ("model_name", "publish.model_name", "Name the models are published under in the registry; empty: a brought model's file/folder name (model_uri), else the architecture's."),
    ("accuracy_tolerance_pp", "publish.accuracy_tolerance_pp", "Accuracy (pp) a new model may lose vs the promoted one and still replace it."),
    ("latency_tolerance", "publish.latency_tolerance", "Relative p50 latency a new model may add vs the promoted one (same environment only)."),
    ("deploy_enabled", "deploy.enabled", "Serve each promoted target's model as a KServe InferenceService (needs KServe and the RBAC of manifests/)."),
    ("deploy_apply", "deploy.apply", "Apply the InferenceServices and wait until Ready; false: only write them into the registry (GitOps)."),
    ("deploy_namespace", "deploy.namespace", "Namespace of the InferenceServices."),
    ("deploy_canary_percent", "deploy.canary_percent", "Traffic share (1-100) an updated model takes as a canary; 100: no canary. Needs KServe's Serverless mode."),
    ("deploy_timeout_s", "deploy.timeout_s", "Seconds to wait for each InferenceService to become Ready."),
    ("deploy_mode", "deploy.mode", "KServe deployment mode: Serverless (Knative; canaries) or RawDeployment (no canary: updates replace)."),
    ("deploy_deployment", "deploy.deployment", "Deployment file (name) whose node pools serve the models; kfopt compile sets the one it compiles for."),
    ("deploy_triton_version", "deploy.triton_version", "Triton image tag for ONNX and TensorRT models (KServe runtimeVersion)."),
    ("deploy_triton_tensorrt", "deploy.triton_tensorrt", "TensorRT version in that Triton image; a TensorRT plan built with another is refused."),
]


def get_path(cfg: RunConfig, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def pipeline_params(cfg: RunConfig) -> dict[str, Any]:
    """The pipeline arguments this configuration stands for."""
    return {name: get_path(cfg, path) for name, path, _ in PARAMS}


def param_description(name: str) -> str:
    return {n: d for n, _, d in PARAMS}[name]
