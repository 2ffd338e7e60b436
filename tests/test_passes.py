"""Techniques as passes over variants: what a pass takes is read from kfopt.json, chains are declared, the
accuracy budget is spent once along a chain, and only the adapters handle a baseline's TensorFlow.

The chain test runs real tfmot pruning, a real tf2onnx export and real ORT static quantization of the
pruned model; the budget test builds its parent variant folder for real and feeds the check chosen
probabilities, so that the arithmetic it asserts is exact.
"""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from kfopt import formats, passes, stages, variant
from kfopt.data import dataset as ds_mod
from kfopt.passes import check as check_mod
from kfopt.passes import onnx_export, ort_int8, ort_int8_trt, qat, tflite_int8

REPO = Path(__file__).resolve().parent.parent


def _meta(name: str, fmt: str, precision: str, framework: str, parent: str | None = "baseline") -> variant.VariantMeta:
    spec = variant.TensorSpec("input", [None, 8, 8, 1])
    return variant.VariantMeta(name=name, format=fmt, precision=precision, target="cpu", input=spec,
                               output=variant.TensorSpec("output", [None, 10]), framework=framework,
                               runtime={"savedmodel": "tensorflow", "onnx": "onnxruntime"}.get(fmt, fmt),
                               technique="prune", parent=parent)


def test_passes_accept_and_refuse_by_kfopt_json_not_by_name():
    # names that lie: an ONNX fp32 model called "tflite_int8", a TFLite model called "onnx_fp32"
    onnx_fp32 = _meta("tflite_int8", "onnx", "fp32", "keras")
    tflite = _meta("onnx_fp32", "tflite", "int8", "keras")
    keras_fp32 = _meta("onnx_model", "savedmodel", "fp32", "keras")
    brought_onnx = _meta("pruned_50", "onnx", "fp32", "onnx", parent=None)
    assert ort_int8.accepts(onnx_fp32) and ort_int8_trt.accepts(onnx_fp32) and ort_int8.accepts(brought_onnx)
    assert not ort_int8.accepts(tflite) and not ort_int8.accepts(keras_fp32)
    assert "is tflite int8" in ort_int8.refusal(tflite)
    assert tflite_int8.accepts(keras_fp32) and qat.accepts(keras_fp32) and onnx_export.accepts(keras_fp32)
    assert not tflite_int8.accepts(tflite)  # already int8
    # an ONNX source model has no Keras/torch code: the reason says so, from kfopt.json's framework
    assert tflite_int8.refusal(brought_onnx) == "direct TFLite conversion needs the model's Keras/torch code; " \
                                               "an onnx model has none"
    assert qat.refusal(brought_onnx).startswith("quantization-aware training needs the model's Keras/torch code")
    assert passes.lacks(keras_fp32, "prune") is None and passes.lacks(brought_onnx, "prune")


def test_names_follow_lineage():
    base = _meta("baseline", "savedmodel", "fp32", "keras", parent=None)
    pruned = _meta("pruned_50", "savedmodel", "fp32", "keras")
    assert tflite_int8.name_for(base) == "tflite_int8" and tflite_int8.name_for(pruned) == "pruned_50_tflite_int8"
    assert passes.chained_names((("tflite_int8",), ("onnx_export", "ort_int8")), pruned) == [
        ("pruned_50_tflite_int8", "tflite", "edge"), ("pruned_50_onnx_fp32", "onnx", "cpu"),
        ("pruned_50_onnx_int8", "onnx", "cpu")]
    export = dataclasses.replace(_meta("onnx_fp32", "onnx", "fp32", "keras"), technique="export")
    assert ort_int8.name_for(export) == "onnx_int8" and ort_int8_trt.name_for(export) == "onnx_int8_trt"


def test_a_chained_variant_has_only_the_budget_its_parent_left(tmp_path):
    """Parent lost 1 pp of a 2 pp budget; the child loses 1 pp more. Against its parent (the old in-stage
    rule) the child passes; against the baseline with what is left (1 pp) it fails: losses do not stack.
    2,000 rows, so that a 2 pp loss is confidently more than 1 pp (kfopt.verify's rule)."""
    n, classes = 2000, 10
    y = np.arange(n) % classes
    onehot = np.eye(classes, dtype=np.float32)
    baseline = onehot[y]
    parent_probs, child_probs = baseline.copy(), baseline.copy()
    parent_probs[:20] = onehot[(y[:20] + 1) % classes]  # the parent gets 20 samples wrong: -1 pp
    child_probs[:40] = onehot[(y[:40] + 1) % classes]  # the child 20 more: -2 pp vs baseline, -1 pp vs parent
    check = check_mod.InStageCheck(np.zeros((n, 1)), y, baseline, "multiclass", accuracy_budget=2.0,
                                   min_agreement=0.9)
    parent_dir = tmp_path / "pruned_50"
    parent_dir.mkdir()
    parent = _meta("pruned_50", "savedmodel", "fp32", "keras")
    parent.extra[check_mod.KEY] = check.compare(parent_probs)
    variant.write(parent_dir, parent)
    assert parent.extra[check_mod.KEY]["accuracy_delta_pp"] == pytest.approx(-1.0)

    against_parent = dataclasses.replace(check, reference=parent_probs).compare(child_probs)
    assert against_parent["passed"], against_parent
    chained = check.after(parent_dir)
    result = chained.compare(child_probs)
    assert chained.spent_pp == pytest.approx(1.0) and result["budget_left_pp"] == pytest.approx(1.0)
    assert not result["passed"] and result["against"] == "baseline"
    assert "its parent had spent 1.00 of the 2 pp" in result["reason"]
    # the baseline's own children have the whole budget
    assert check.after(_baseline_dir(tmp_path)).budget_left_pp == 2.0


def _baseline_dir(tmp_path):
    vdir = tmp_path / "baseline"
    vdir.mkdir()
    variant.write(vdir, _meta("baseline", "savedmodel", "fp32", "keras", parent=None))
    return vdir


@pytest.fixture(scope="module")
def pruned(digits_small, tmp_path_factory):
    from kfopt.optimize import prune

    out = tmp_path_factory.mktemp("passes") / "pruned"
    prune.run(digits_small["baseline"], digits_small["dataset"], out, sparsities=[0.5], epochs=2,
              calibration_samples=32, accuracy_budget=3.0, min_agreement=0.9, fallback_max_attempts=1)
    return out


def test_ort_int8_follows_a_pruned_model_through_its_onnx_export(pruned, digits_small, tmp_path):
    import onnx

    ds = ds_mod.read(digits_small["dataset"])
    ctx = passes.Context(ds, check_mod.calibration_set(ds, 32), check_mod.InStageCheck.against_baseline(
        digits_small["baseline"], ds, 3.0, 0.9), tmp_path / "work")
    ctx.workdir.mkdir()
    made = passes.follow((("onnx_export", "ort_int8"),), pruned / "pruned_50", tmp_path / "out", ctx)
    assert [m.name for m in made] == ["pruned_50_onnx_fp32", "pruned_50_onnx_int8"]
    onnx_fp32, int8 = (variant.read(tmp_path / "out" / m.name) for m in made)
    assert (onnx_fp32.parent, onnx_fp32.format, onnx_fp32.framework) == ("pruned_50", "onnx", "keras")
    assert (int8.parent, int8.precision, int8.technique) == ("pruned_50_onnx_fp32", "int8", "prune+export+quantize")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "out" / int8.name / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = ds.split("test")[0][:8]
    assert formats.load(tmp_path / "out" / int8.name).predict(x).shape == (8, 10)
    # each step is checked against the baseline with the budget its parent left
    pruned_loss = max(0.0, -variant.read(pruned / "pruned_50").extra[check_mod.KEY]["accuracy_delta_pp"])
    assert onnx_fp32.extra[check_mod.KEY]["budget_left_pp"] == pytest.approx(max(0.0, 3.0 - pruned_loss), abs=1e-4)
    export_loss = max(0.0, -onnx_fp32.extra[check_mod.KEY]["accuracy_delta_pp"])
    assert int8.extra[check_mod.KEY]["budget_left_pp"] == pytest.approx(max(0.0, 3.0 - export_loss), abs=1e-4)
    assert int8.extra[check_mod.KEY]["against"] == "baseline"


def test_a_refused_pass_is_a_skipped_variant_with_the_reason(pruned, digits_small, tmp_path):
    ds = ds_mod.read(digits_small["dataset"])
    ctx = passes.Context(ds, check_mod.calibration_set(ds, 8), None, tmp_path)
    made = passes.follow((("ort_int8",),), pruned / "pruned_50", tmp_path / "out", ctx)  # a SavedModel, not ONNX
    assert made[0].skipped and made[0].name == "pruned_50_onnx_int8"
    assert made[0].reason == "ORT static int8 quantizes an ONNX fp32 model; pruned_50 is savedmodel fp32"


# --- nothing outside the adapters handles a baseline's TensorFlow -----------------------------------------

#: Module imports that mean "this code handles a Keras/TensorFlow model itself".
KERAS_MODULES = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "tf2onnx", "kfopt.tfenv",
                 "kfopt.frameworks.keras")
#: Modules outside kfopt/frameworks/ and kfopt/formats/ (the runners and converters) that legitimately are
#: Keras code, and why. Each must really import one (so a stale entry fails too).
ALLOWED = {
    "kfopt/tfenv.py": "the one way TensorFlow is imported (TF_USE_LEGACY_KERAS before the first import)",
    "kfopt/models/architectures.py": "kfopt's own architectures are tf-keras models",
    "kfopt/models/train.py": "builds and trains kfopt's own Keras architectures (seed, mixed-precision policy)",
    "kfopt/models/keras_mwms.py": "the same training in MultiWorkerMirroredStrategy workers (TF_CONFIG)",
    "kfopt/optimize/prune.py": "tfmot magnitude pruning, Keras-only, after the 'prune' capability check",
    "kfopt/optimize/distill.py": "the student is derived from a Keras layer graph and trained with tf.GradientTape",
    "kfopt/optimize/channels.py": "reads the Keras layer graph the student is derived from (distill)",
    "kfopt/passes/qat.py": "tfmot quantization-aware training, Keras-only, after the 'qat' capability check",
}


def _keras_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found += [n for n in names if any(n == m or n.startswith(m + ".") for m in KERAS_MODULES)]
    return found


def test_only_adapters_runners_and_the_allowed_keras_code_import_tensorflow():
    offenders = {}
    for path in sorted((REPO / "kfopt").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("kfopt/frameworks/", "kfopt/formats/")):
            continue
        imports = _keras_imports(path)
        if imports:
            offenders[rel] = imports
    assert set(offenders) - set(ALLOWED) == set(), {k: v for k, v in offenders.items() if k not in ALLOWED}
    assert set(ALLOWED) - set(offenders) == set(), "allow-listed modules that no longer import Keras code"
    for stage in ("export.py", "optimize/quantize.py", "optimize/gate.py", "accelerate/xla_stage.py",
                  "models/existing.py", "passes/tflite_int8.py", "passes/ort_int8.py"):
        assert f"kfopt/{stage}" not in offenders


def test_fallback_does_not_retry_what_only_the_parent_lost(tmp_path):
    """with_fallback's decision, with a check whose answers are chosen (the check itself is tested above): an
    int8 attempt as accurate as its float parent leaves nothing for kept-in-float layers to win back."""
    from kfopt.passes.fallback import with_fallback

    n = 1000  # 10 wrong rows: a 1 pp loss that these rows can tell from no loss (kfopt.verify's rule)
    y = np.arange(n) % 10
    onehot = np.eye(10, dtype=np.float32)
    wrong_once = onehot[y].copy()
    wrong_once[:10] = onehot[(y[:10] + 1) % 10]

    @dataclasses.dataclass
    class Chosen(check_mod.InStageCheck):
        def check(self, variant_dir):
            return self.compare(wrong_once)  # every attempt loses exactly what the parent lost

    def make(vdir, float_layers):
        vdir.mkdir(parents=True)
        return variant.write(vdir, _meta("pruned_50_tflite_int8", "tflite", "int8", "keras", parent="pruned_50"))

    ranked = []
    check = Chosen(np.zeros((n, 1)), y, onehot[y], "multiclass", 0.5, 0.9, spent_pp=1.0)
    meta = with_fallback(make, lambda: ranked.append(1) or [("conv", 1.0)], check, tmp_path / "v", 3, "test")
    fallback = meta.extra["fallback"]
    assert len(fallback["attempts"]) == 1 and not ranked and "already spent 1.00 pp" in fallback["no_retry"]
    assert meta.extra[check_mod.KEY]["budget_left_pp"] == 0.0 and not meta.extra[check_mod.KEY]["passed"]
    # a parent that spent nothing: the same miss is the quantization's, so the layers are ranked and retried
    fresh = dataclasses.replace(check, spent_pp=0.0, accuracy_budget=0.0)
    meta = with_fallback(make, lambda: ranked.append(1) or [("conv", 1.0)], fresh, tmp_path / "w", 3, "test")
    assert ranked and len(meta.extra["fallback"]["attempts"]) == 2 and meta.extra["fallback"]["no_retry"] is None


@pytest.mark.parametrize("name", sorted(passes.PASSES))
def test_every_pass_declares_the_same_surface(name):
    """One shape for every technique: its name, what it makes, a Config whose every field says where it is
    configured and what it does, and refusal/accepts/name_for/run."""
    step = passes.get(name)
    assert step.NAME == name
    assert all(isinstance(getattr(step, k), str) for k in ("FORMAT", "PRECISION", "TARGET", "TECHNIQUE"))
    fields = dataclasses.fields(step.Config)
    assert dataclasses.is_dataclass(step.Config) and step.Config.__dataclass_params__.frozen
    for field in fields:
        assert field.metadata.get("config") and field.metadata.get("help"), (name, field.name)
        stages.config_type(field.metadata["config"])  # a field of the run configuration (KeyError if not)
    for function in ("refusal", "accepts", "name_for", "run"):
        assert callable(getattr(step, function)), (name, function)
    step.Config()  # the defaults are valid
