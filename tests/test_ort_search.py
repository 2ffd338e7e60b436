"""The ORT int8 search: every setting tried is checked, timed and recorded; the fastest passing one is kept.

Real ONNX Runtime quantization and timing throughout, on the bundled digits CNN and on a model kfopt did
not build (tf_keras.applications.MobileNetV2, alpha 0.35, 32x32x3, trained briefly on a synthetic image
set, brought with model_uri and exported by kfopt's export stage). A hostile but real setting
(Percentile calibration clipping activations to their 40th-60th percentiles) must fail the in-stage check and
so is never kept, however fast it is.
"""

import math

import numpy as np
import pytest

from kfopt import export, formats, passes, variant
from kfopt.data import dataset as ds_mod
from kfopt.data import preprocess
from kfopt.errors import ConfigError
from kfopt.models import train
from kfopt.passes import check as check_mod
from kfopt.passes import ort_int8

HOSTILE = "QOperator U8U8 per-channel Percentile=60"
SPACE = (*ort_int8.SEARCH, HOSTILE)


def _images(path, n=240, classes=3, seed=0):
    """Noise with a bright patch in a class-specific quadrant: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 32, 32, 3)).astype(np.float32)
    y = np.arange(n) % classes
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, 16 * r:16 * r + 16, 16 * q:16 * q + 16, c] += 2.0
    np.savez(path, x=x, y=y)
    return path


def _search(root, baseline, dataset, budget, agreement):
    export.run(baseline, root / "exports", tflite=False)
    ds = ds_mod.read(dataset)
    ctx = passes.Context(ds, check_mod.calibration_set(ds, 50),  # not a multiple of 32: uneven batches break histograms
                         check_mod.InStageCheck.against_baseline(baseline, ds, budget, agreement), root / "work")
    ctx.workdir.mkdir()
    cfg = ort_int8.Config(fallback_max_attempts=1, search=SPACE, threads=1, batch_sizes=(1, 64))
    meta = passes.apply(ort_int8, root / "exports" / "onnx_fp32", root / "out", ctx, cfg)
    return {"meta": meta, "dir": root / "out" / meta.name, "ds": ds}


@pytest.fixture(scope="module")
def digits(digits_small, tmp_path_factory):
    return _search(tmp_path_factory.mktemp("ort_search_digits"), digits_small["baseline"], digits_small["dataset"],
                   3.0, 0.9)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    from kfopt.tfenv import keras

    k = keras()
    root = tmp_path_factory.mktemp("ort_search_mobilenet")
    preprocess.run(str(_images(root / "images.npz")), root / "dataset", seed=0)
    ds = ds_mod.read(root / "dataset")
    k.utils.set_random_seed(0)
    model = k.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3)
    for layer in model.layers:  # moving statistics that settle within a short training run
        if isinstance(layer, k.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(k.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    model.fit(*ds.split("train"), epochs=10, batch_size=16, verbose=0)
    model.save(root / "mobilenet.keras")
    train.run(root / "dataset", root / "baseline", model_uri=str(root / "mobilenet.keras"))
    return _search(root, root / "baseline", root / "dataset", 5.0, 0.9)


@pytest.fixture(params=["digits", "mobilenet"])
def searched(request):
    return request.getfixturevalue(request.param)


def _geomean(p50):
    return math.exp(sum(map(math.log, p50.values())) / len(p50))


def test_every_setting_is_recorded_and_the_fastest_passing_is_kept(searched):
    meta, record = searched["meta"], searched["meta"].extra["search"]
    points = record["points"]
    assert [p["setting"] for p in points] == list(SPACE)
    for p in points:
        assert set(p["p50_ms"]) == {"1", "64"} and all(v > 0 for v in p["p50_ms"].values()), p
        assert isinstance(p["passed"], bool) and p["reason"] and "agreement" in p
    passing = [p for p in points if p["passed"]]
    assert passing, points
    best = min(passing, key=lambda p: _geomean(p["p50_ms"]))
    assert record["chosen"] == best["setting"] and set(record["parent_p50_ms"]) == {"1", "64"}
    assert meta.name == "onnx_int8" and meta.precision == "int8"
    assert {k: meta.params[k] for k in ("format", "activations", "weights", "per_channel", "calibration")} == \
        {k: best[k] for k in ("format", "activations", "weights", "per_channel", "calibration")}
    assert meta.extra[check_mod.KEY]["passed"] and meta.extra[check_mod.KEY]["agreement"] == best["agreement"]


def test_a_setting_that_fails_the_check_is_never_kept(searched):
    record = searched["meta"].extra["search"]
    hostile = next(p for p in record["points"] if p["setting"] == HOSTILE)
    assert not hostile["passed"] and record["chosen"] != HOSTILE
    assert hostile["percentile"] == 60.0


def test_the_kept_model_is_the_chosen_form_and_runs(searched):
    import onnx

    meta = searched["meta"]
    ops = {n.op_type for n in onnx.load(str(searched["dir"] / "model.onnx")).graph.node}
    assert ("QLinearConv" in ops) is (meta.params["format"] == "QOperator")
    variant.read(searched["dir"])  # checksums intact after the move
    x = searched["ds"].split("test")[0][:5]
    assert formats.load(searched["dir"]).predict(x).shape == (5, searched["ds"].schema.num_classes)


def test_settings_parse_and_bad_entries_fail_clearly():
    s = ort_int8.Setting.parse("QOperator U8S8 per-tensor Entropy")
    assert (s.format, s.activations, s.weights, s.per_channel, s.calibration) == \
        ("QOperator", "uint8", "int8", False, "Entropy")
    assert [ort_int8.Setting.parse(t).label() for t in SPACE] == list(SPACE)
    assert ort_int8._even_batch(200) == 25 and ort_int8._even_batch(64) == 32 and ort_int8._even_batch(7) == 7
    for bad in ("QDQ S8S8 MinMax", "QDQ X8S8 per-channel MinMax", "QDQ S8S8 per-channel MinMax=3",
                "QDQ S8S8 per-channel Percentile=200", "QDQ S8S8 per-channel Percentile=5"):
        with pytest.raises(ConfigError, match="is not a setting"):
            ort_int8.Config(search=(bad,))


def test_a_bad_search_entry_in_the_run_config_names_the_key_and_the_form():
    from kfopt import config

    cfg = config.from_dict({"quantize": {"ort_search": ["QOperator U8U8 per-channel Percentile"]}})
    config.validate(cfg)  # one valid entry
    config.validate(config.from_dict({"quantize": {"ort_search": []}}))  # no search: QDQ S8S8 only
    with pytest.raises(ConfigError, match=r"quantize.ort_search entry 'QOperator U8U8' .*e\.g\."):
        config.validate(config.from_dict({"quantize": {"ort_search": ["QOperator U8U8"]}}))


def test_a_spent_time_budget_stops_the_search_after_its_first_point(digits_small, tmp_path):
    """With a stage budget already spent, the first setting is still made (a search always keeps something),
    no other starts, and the record names the settings never tried."""
    export.run(digits_small["baseline"], tmp_path / "exports", tflite=False)
    ds = ds_mod.read(digits_small["dataset"])
    ctx = passes.Context(ds, check_mod.calibration_set(ds, 50),
                         check_mod.InStageCheck.against_baseline(digits_small["baseline"], ds, 3.0, 0.9),
                         tmp_path / "work", search_budget_s=1e-6)
    ctx.workdir.mkdir()
    cfg = ort_int8.Config(fallback_max_attempts=0, search=SPACE, threads=1, batch_sizes=(1,))
    meta = passes.apply(ort_int8, tmp_path / "exports" / "onnx_fp32", tmp_path / "out", ctx, cfg)
    record = variant.read(tmp_path / "out" / meta.name).extra["search"]
    assert [p["setting"] for p in record["points"]] == [ort_int8.Setting.parse(SPACE[0]).label()]
    assert record["not_tried"] == [ort_int8.Setting.parse(s).label() for s in SPACE[1:]]
    assert record["stopped"] == "time budget spent" and record["time_budget_s"] == 1e-6
    assert record["points"][0]["seconds"] > 0


def test_the_report_shows_every_point_tried_with_the_kept_one(digits):
    """The report's searches table and plot come from the kept variant's real kfopt.json record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfopt import report_search

    meta = variant.read(digits["dir"])
    report = {"rows": [{"name": meta.name, "extra": meta.extra}, {"name": meta.name, "extra": meta.extra}],
              "budget": {"accuracy_budget_pp": 3.0}}
    record = meta.extra["search"]
    [found] = report_search.searches(report)  # one per variant, however many hardware rows it has
    lines = report_search.markdown(report)
    table = [line for line in lines if line.startswith("| ") and "setting" not in line]
    assert len(table) == len(record["points"]) + len(record["not_tried"])
    kept = [line for line in table if "◀ kept" in line]
    assert len(kept) == 1 and kept[0].startswith(f"| {record['chosen']} | yes |")
    hostile = next(line for line in table if line.startswith(f"| {ort_int8.Setting.parse(HOSTILE).label()} |"))
    assert "| no |" in hostile
    assert report_search.summary(found).endswith(f"kept {record['chosen']}")
    fig = report_search.plot(report, plt)
    assert fig is not None and len(fig.axes) == 1 and len(fig.axes[0].collections) == len(record["points"])
    plt.close(fig)
