# The targets the README and CI run. `make demo` runs the whole flow; `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration lint format typecheck system-deps services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## System packages the daemon and tests need (Debian): SoftHSM2, p11-kit, fonts, poppler.
system-deps:
	./scripts/system-deps.sh

## Start PostgreSQL, RabbitMQ and Mosquitto if they are not running.
services:
	./scripts/services.sh

demo: $(STAMP) system-deps services
	$(BIN)/hocba-signer demo --records 50 --schools 3 --json

test: $(STAMP) system-deps services lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) system-deps services
	$(BIN)/pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .dev var .pytest_cache .mypy_cache .ruff_cache
