"""pyproject.toml's dependencies name every runtime pin of requirements/run.txt, at the same version."""

import re
import tomllib

from conftest import REPO


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", x) for x in lines) if m}


def test_pyproject_dependencies_match_the_runtime_pins():
    run = _pins((REPO / "requirements" / "run.txt").read_text().splitlines())
    project = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert project == run
