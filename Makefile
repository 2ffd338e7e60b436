# kfopt — the two commands a new user runs are `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= digits_cnn
PIP    := $(BIN)/pip install --disable-pip-version-check -q

RUN_STAMP  := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: run test compile clean help

help:
	@echo "make run      - create .venv (once) and run the whole pipeline locally on the bundled digits set"
	@echo "make test     - create .venv + test tools (once) and run the whole test suite"
	@echo "make bench    - benchmark kfopt's variants against the usual serving and against Olive"
	@echo "make compile  - compile the pipeline for Kubeflow to kfopt_pipeline.yaml"
	@echo "make images   - build the cpu/gpu/tpu images (needs a Docker engine)"

$(RUN_STAMP): requirements/run.txt requirements/constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "kfopt needs $(PYTHON) (Python 3.11); set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing pinned dependencies into $(VENV) (first time only, ~1-3 min)…"
	$(PIP) --upgrade pip==24.3.1
	$(PIP) -r requirements/run.txt -c requirements/constraints.txt
	$(PIP) --no-deps -e .
	@touch $@

$(TEST_STAMP): $(RUN_STAMP) requirements/test.txt
	$(PIP) -r requirements/test.txt -c requirements/constraints.txt
	@touch $@

run: $(RUN_STAMP)
	$(BIN)/kfopt run --config $(CONFIG)

compile: $(RUN_STAMP)
	$(BIN)/kfopt compile --config $(CONFIG) -o kfopt_pipeline.yaml

# Manifest checkers (checkov, kubernetes-validate, hadolint, yamllint) live in their own venv:
# checkov pins many packages that would fight with TensorFlow's.
TOOLS_VENV  := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed

$(TOOLS_STAMP): requirements/tools.txt requirements/tools-constraints.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --disable-pip-version-check -q -r requirements/tools.txt -c requirements/tools-constraints.txt
	@touch $@

.PHONY: tools
tools: $(TOOLS_STAMP)

test: $(TEST_STAMP) $(TOOLS_STAMP)
	$(BIN)/python -m pytest -q

include images/images.mk
include bench/bench.mk

clean:
	rm -rf runs .pytest_cache
