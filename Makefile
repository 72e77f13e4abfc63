# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MLSTAGE_HOME ?= $(HOME)/.mlstage
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_HOME ?= $(MLSTAGE_HOME)/prefect

.PHONY: demo test lint docs unit setup bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
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

clean:
	rm -rf $(VENV) .pytest_cache build dist
