"""Security, checked statically: images run as a non-root user and write only under /tmp, the
compiled pipeline runs every task as that user, and no secret is in the repository.

The secret scanner is detect-secrets from the tools venv (requirements/tools.txt), run over every
git-tracked file; a planted fake secret proves it can fail. Manifest checks (RBAC, NetworkPolicy,
Pod Security labels, checkov, hadolint) are in tests/test_manifests.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from kfopt import cli
from pipelines import placement
from test_manifests import DOCKERFILES, ROOT, tool

CREDENTIAL_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_KEY|CREDENTIALS)", re.I)


def instructions(dockerfile_text: str) -> list[str]:
    """Every instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile_text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def final_stage(dockerfile_text: str) -> list[str]:
    """The instructions of the last build stage: the image that runs."""
    lines = instructions(dockerfile_text)
    starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    return lines[starts[-1]:]


def env_of(stage: list[str]) -> dict[str, str]:
    env = {}
    for line in stage:
        if line.upper().startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line[4:])))
    return env


def image_problems(dockerfile_text: str) -> list[str]:
    """What makes an image unfit for a non-root, read-only-root pod, or carry a credential."""
    stage = final_stage(dockerfile_text)
    problems = []
    users = [line.split()[1] for line in stage if line.upper().startswith("USER ")]
    if not users:
        problems.append("no USER in the final stage: the image runs as root")
    else:
        user = users[-1].split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"USER {users[-1]}: use a numeric non-zero uid (runAsNonRoot checks uids)")
    env = env_of(stage)
    for var in ("HOME", "TMPDIR"):
        if not env.get(var, "").startswith("/tmp"):
            problems.append(f"{var}={env.get(var)}: must be under /tmp, the pod's emptyDir")
    for line in instructions(dockerfile_text):  # every stage: build-stage ARGs stay in the history
        if line.upper().startswith(("ENV ", "ARG ")):
            names = re.findall(r"(\w+)=", line) or line.split()[1:2]
            problems += [f"{line.split()[0]} {n}: credentials do not belong in an image"
                         for n in names if CREDENTIAL_NAME.search(n)]
        if line.upper().startswith("ADD ") and re.search(r"https?://", line):
            problems.append(f"{line}: ADD from a URL is unverified; download with a checksum in RUN")
    return problems


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_run_as_non_root_and_write_only_under_tmp(dockerfile):
    assert image_problems(dockerfile.read_text()) == []


@pytest.mark.parametrize("text, expected", [
    ("FROM python:3.11\nENV HOME=/tmp TMPDIR=/tmp\n", "no USER"),
    ("FROM python:3.11\nENV HOME=/tmp TMPDIR=/tmp\nUSER root\n", "numeric non-zero uid"),
    ("FROM python:3.11\nENV HOME=/tmp TMPDIR=/tmp\nUSER 0:0\n", "numeric non-zero uid"),
    ("FROM python:3.11\nUSER 10001\nENV HOME=/home/app TMPDIR=/tmp\n", "HOME=/home/app"),
    ("FROM python:3.11\nENV HOME=/tmp TMPDIR=/tmp GCS_TOKEN=x\nUSER 10001\n", "GCS_TOKEN"),
    ("FROM python:3.11 AS build\nUSER 10001\nENV HOME=/tmp TMPDIR=/tmp\nFROM python:3.11\n", "no USER"),
    ("FROM python:3.11 AS build\nARG PIP_INDEX_TOKEN\nFROM python:3.11\nUSER 10001\nENV HOME=/tmp TMPDIR=/tmp\n",
     "ARG PIP_INDEX_TOKEN"),
    ("FROM python:3.11\nADD https://example.com/x.tgz /opt/\nUSER 10001\nENV HOME=/tmp TMPDIR=/tmp\n",
     "ADD from a URL"),
])
def test_the_image_rules_catch_a_bad_dockerfile(text, expected):
    assert any(expected in problem for problem in image_problems(text)), image_problems(text)


def test_dockerignore_is_an_allow_list():
    """The build context starts empty (`*`), so no credential file near the repo reaches an image."""
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"]
    assert lines[0] == "*"
    assert not [l for l in lines if l.startswith("!") and re.search(r"\.env|secret|key|credential", l, re.I)]


def test_the_compiled_pipeline_runs_every_task_as_the_non_root_image_user(tmp_path):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "--deployment", "gke", "-o", str(out)]) == 0
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    executors = set(spec["deploymentSpec"]["executors"])
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == executors, "every task has a Kubernetes platform entry"
    for name, entry in k8s.items():
        context = entry["securityContext"]
        assert context["runAsNonRoot"] is True and int(context["runAsUser"]) == placement.RUN_AS_UID, name
        assert {m["mountPath"] for m in entry["emptyDirMounts"]} >= {"/tmp", "/gcs"}, name


#: tests/fixtures/registry_v1 is a registry kfopt wrote: its JSON holds sha256 checksums (64 hex) and claim
#: tokens (uuid4 hex, 32), which the hex-entropy plugin cannot tell from keys. Only such whole
#: `"key": "<hex>"` lines are let through, and only in those fixture files.
FIXTURES = "tests/fixtures/registry_v1/"
CHECKSUM_LINE = r'^\s*"[^"]+": "([0-9a-f]{64}|[0-9a-f]{32})",?$'


def secret_findings(paths: list[str], exclude_lines: str | None = None) -> dict[str, list[dict]]:
    """detect-secrets over `paths` (relative to the repo root): file → findings."""
    extra = ["--exclude-lines", exclude_lines] if exclude_lines else []
    result = subprocess.run([tool("detect-secrets"), "scan", *extra, *paths], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)["results"]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split("\0") if p and (ROOT / p).is_file()]


def test_no_secret_in_any_tracked_file():
    files = tracked_files()
    assert len(files) > 50, "git ls-files found the repository"
    fixtures = [f for f in files if f.startswith(FIXTURES)]
    findings = secret_findings([f for f in files if not f.startswith(FIXTURES)])
    findings.update(secret_findings(fixtures, CHECKSUM_LINE) if fixtures else {})
    assert findings == {}, {f: [(x["type"], x["line_number"]) for x in v] for f, v in findings.items()}


def test_the_scanner_finds_a_planted_fake_secret(tmp_path):
    """Built at run time, so this file itself holds no secret-shaped string."""
    planted = ROOT / f".kfopt-planted-{tmp_path.name}.py"
    fake_key_id = "AKIA" + "KFOPTFAKE" + "0123456"
    fake_secret = "".join(chr(ord("a") + (i * 7) % 26) for i in range(40))
    planted.write_text(f'AWS_ACCESS_KEY_ID = "{fake_key_id}"\naws_secret_access_key = "{fake_secret}"\n')
    try:
        findings = secret_findings([planted.name, "README.md"])
    finally:
        planted.unlink()
    assert list(findings) == [planted.name]
    assert "AWS Access Key" in {f["type"] for f in findings[planted.name]}
