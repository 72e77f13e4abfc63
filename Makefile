# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MLSTAGE_HOME ?= $(HOME)/.mlstage
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_HOME ?= $(MLSTAGE_HOME)/prefect

.PHONY: demo test lint docs unit setup bench clean image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the demo needs only mlstage and scikit-learn (the 'demo' extra); tests need '.[dev]' (torch,
# dask, PostgreSQL, moto...), which includes the demo's
$(VENV)/.installed-demo: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-demo

setup: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(BIN)/python -m flows.demo

lint: setup
	$(BIN)/ruff check src flows blocks bench tests
	$(BIN)/ruff format --check src flows blocks bench tests

# the documentation site (mkdocs.yml): built strictly, into the venv (never committed)
docs: setup
	$(BIN)/mkdocs build --strict -q -d $(VENV)/site

test: lint docs
	$(BIN)/python -m pytest -q

unit: setup
	$(BIN)/python -m pytest -q tests/unit

bench: setup
	$(BIN)/python -m bench.all

# the worker and job image for Kubernetes (docs/kubernetes.md: base image, proxies, pushing)
IMAGE ?= mlstage:dev
image:
	buildah bud -t $(IMAGE) -f Containerfile .

clean:
	rm -rf $(VENV) .pytest_cache build dist
