"""Property-based tests (hypothesis): whatever a user feeds the config loader, `--set` parsing, the
deployment parser or the data loader/validator, it is accepted or refused with kfopt's own error.

Nothing here is mocked: the real `kfopt.config.from_dict`, `kfopt.cli.load_config`,
`kfopt.deployment` parser, and `kfopt.data.load` / `kfopt.data.validate` on real files written to a
temporary folder. A failure prints the smallest input hypothesis found, which is the bug report.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kfopt import cli, config, deployment
from kfopt.data import load, validate
from kfopt.errors import KfoptError

# No example database: every run draws fresh examples (hypothesis still caches constants, self-gitignored).
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
                      max_leaves=12)


def _config_paths() -> list[str]:
    """Every settable `section.key` (and top-level key) of the run configuration."""
    paths = []
    for top in dataclasses.fields(config.RunConfig):
        if dataclasses.is_dataclass(top.type) or isinstance(top.type, str) and top.type.endswith("Config"):
            section = getattr(config.RunConfig(), top.name)
            paths += [f"{top.name}.{f.name}" for f in dataclasses.fields(section)]
        else:
            paths.append(top.name)
    return paths


PATHS = _config_paths()


def accepted_or_kfopt_error(call, *args):
    """Run `call`; any exception other than a KfoptError fails the test (with its type and text)."""
    try:
        return call(*args)
    except KfoptError:
        return None


@st.composite
def near_valid_configs(draw) -> dict:
    """The default configuration with a few real keys set to arbitrary values (reaches validate())."""
    raw = yaml.safe_load(config.resolve_path("digits_cnn").read_text())
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=4)):
        node = raw
        *sections, key = path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = draw(VALUES)
    return raw


@FAST
@given(st.dictionaries(st.text(max_size=10) | st.integers(), VALUES, max_size=5))
def test_from_dict_on_arbitrary_mappings(raw):
    accepted_or_kfopt_error(config.from_dict, raw)


@FAST
@given(near_valid_configs())
def test_from_dict_on_real_keys_with_arbitrary_values(raw):
    cfg = accepted_or_kfopt_error(config.from_dict, raw)
    if cfg is not None:  # accepted means usable: floats the run divides or compares with are finite
        assert np.isfinite([cfg.verify.accuracy_budget, *cfg.distill.student_width,
                            cfg.train.learning_rate]).all()


SET_VALUES = st.text(max_size=15) | VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
OVERRIDES = st.lists(
    st.tuples(st.sampled_from(PATHS) | st.text(max_size=15), SET_VALUES).map(lambda kv: f"{kv[0]}={kv[1]}")
    | st.text(max_size=20), max_size=4)


@FAST
@given(OVERRIDES)
def test_set_overrides_parse_or_fail_clearly(pairs):
    args = argparse.Namespace(config="digits_cnn", set=pairs)
    accepted_or_kfopt_error(cli.load_config, args)


@FAST
@given(st.dictionaries(st.text(max_size=8), VALUES, max_size=4), OVERRIDES)
def test_apply_overrides_on_arbitrary_raw_configs(raw, pairs):
    accepted_or_kfopt_error(lambda: config.from_dict(cli._apply_overrides(raw, pairs)))


def _shipped_deployment() -> dict:
    return yaml.safe_load((deployment.deployment_dir() / "gke.yaml").read_text())


@st.composite
def mutated_deployments(draw) -> dict:
    """gke.yaml with one value somewhere in its tree replaced by an arbitrary one."""
    raw = _shipped_deployment()
    node = raw
    for _ in range(draw(st.integers(1, 4))):
        if not isinstance(node, dict) or not node:
            break
        key = draw(st.sampled_from(sorted(node, key=str)))
        if not isinstance(node[key], dict) or draw(st.booleans()):
            node[key] = draw(VALUES)
            break
        node = node[key]
    return raw


@FAST
@given(mutated_deployments() | VALUES)
def test_deployment_parser_on_mutated_files(raw):
    accepted_or_kfopt_error(deployment._Parser(Path("fuzz.yaml")).deployment, raw)


DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "int8", "uint8", "uint64", "bool",
                          "complex64", "U3", "S3", "datetime64[s]"])


@st.composite
def npz_arrays(draw) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 70))
    x = draw(hnp.arrays(draw(DTYPES), draw(st.sampled_from([(n, 3), (n, 4, 4), (n,), (), (n, 0), (n, 2, 2, 1)]))))
    y_shape = draw(st.sampled_from([(n,), (n, 1), (n, 3), (), (max(n - 1, 0),)]))
    y = draw(hnp.arrays(draw(DTYPES), y_shape))
    return x, y


def _load_and_validate(path: Path, label_column: str = "label") -> None:
    raw = load.load(str(path), label_column)
    validate.validate(raw, min_samples=10)


@FAST
@given(npz_arrays())
def test_npz_files_of_arbitrary_arrays(arrays):
    x, y = arrays
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        np.savez(path, x=x, y=y)
        accepted_or_kfopt_error(_load_and_validate, path)


@FAST
@given(st.text(max_size=300))
def test_csv_files_of_arbitrary_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        accepted_or_kfopt_error(_load_and_validate, path)


CELLS = st.sampled_from(["1", "0", "-2.5", "nan", "inf", "", " ", "x", "1e999", "3", "a,b", "\"q\""]) | st.text(max_size=4)


@FAST
@given(st.integers(1, 4), st.lists(st.lists(CELLS, min_size=1, max_size=5), max_size=40),
       st.sampled_from(["label", "y", "missing"]))
def test_csv_tables_of_arbitrary_cells(width, rows, label_column):
    header = [f"f{i}" for i in range(width)] + ["label"]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        path.write_text(buffer.getvalue())
        accepted_or_kfopt_error(_load_and_validate, path, label_column)


@FAST
@given(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)),
       hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=2, max_side=30)))
def test_validate_on_arbitrary_arrays(x, y):
    raw = load.RawData(x, y, "tabular", "fuzz")
    accepted_or_kfopt_error(validate.validate, raw, 5)


def test_the_property_helper_does_fail_on_a_foreign_exception():
    """Guard: the helper lets anything but a KfoptError through, so the properties above can fail."""
    with pytest.raises(ZeroDivisionError):
        accepted_or_kfopt_error(lambda: 1 / 0)
