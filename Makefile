# freshrec — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
RUN_ARGS ?=
REHEARSE_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup run run-quick test test-fast lint format compile bench rehearse checkov lock lock-cuda clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

# --compile-bytecode: every task of a local pipeline is a fresh interpreter importing TF, Feast or Evidently;
# without .pyc files (uv writes none by default, and PYTHONDONTWRITEBYTECODE stops Python writing them) each
# import compiles from source: `import tensorflow` takes 24 s of CPU instead of 8.
$(STAMP): requirements.lock pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "uv==0.13.9"
	$(UV) pip install --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(UV) pip install --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP) ## create the virtual environment from requirements.lock

run: $(STAMP) ## run the whole continuously-learning loop locally on MovieLens-100k
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/freshrec run $(RUN_ARGS)

run-quick: $(STAMP) ## the same loop on a small window (1.5 to 3 minutes on 2 cores)
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/freshrec run --quick $(RUN_ARGS)

test: $(STAMP) ## run every test (slow, integration and e2e included)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: $(STAMP) ## run the fast tests only
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/pytest -m "not slow and not e2e" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: $(STAMP) ## recompile the pipelines' YAML and re-render the base manifests from the cluster layout
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/freshrec pipeline compile
	$(BIN)/freshrec cluster render

bench: $(STAMP) ## run every benchmark and rewrite benchmarks/results.md
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m benchmarks.run_all

rehearse: $(STAMP) ## run every overlay + the compiled pipeline as rendered on this machine (root; ~3 min each)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/freshrec rehearse --rows $(REHEARSE_ARGS)

lock: ## re-resolve requirements.in into requirements.lock (and the checkov venv's lock)
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet "uv==0.13.9"; }
	$(UV) pip compile requirements.in -o requirements.lock --python-version 3.11
	$(UV) pip compile requirements-checkov.in -o requirements-checkov.lock --python-version 3.11

CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.lock $(STAMP)
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(UV) pip install --python $(CHECKOV_VENV)/bin/python -q -r requirements-checkov.lock
	@touch $@

checkov: $(CHECKOV_VENV)/.installed ## scan every rendered overlay with checkov (fails on a finding manifests/README.md does not justify)
	$(BIN)/python -m freshrec.cluster.scan --checkov $(CHECKOV_VENV)/bin/checkov

lock-cuda: ## re-resolve requirements-cuda.in (the CUDA image's lock) against requirements.lock
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet "uv==0.13.9"; }
	$(UV) pip compile requirements-cuda.in -o requirements-cuda.lock --python-version 3.11 --python-platform x86_64-manylinux_2_28

clean: ## remove the virtual environment and local state
	rm -rf $(VENV) $(CHECKOV_VENV) .freshrec
