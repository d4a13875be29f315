# The targets the README and CI run. `make demo` runs the whole flow; `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration lint format typecheck system-deps services clean bench bench-quick chaos soak

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

## Throughput: HSM raw vs plain pyHanko vs the signing path vs the daemon (1 and 2
## instances) on the real services; one JSON document on stdout, a table on stderr.
bench: $(STAMP) system-deps services
	$(BIN)/python -m bench.run

## The same in under a minute (fewer records, no paced run).
bench-quick: $(STAMP) system-deps services
	$(BIN)/python -m bench.run --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Fault injection against private PostgreSQL, RabbitMQ, Mosquitto and p11-kit instances
## it starts itself (root: it mounts a tmpfs for the store); never the shared services.
CHAOS_SIZE ?= small
chaos: $(STAMP) system-deps
	$(BIN)/python -m tests.chaos --size $(CHAOS_SIZE)

## A steady load for SOAK_MINUTES (default 10) on a private cluster: memory, backlog, p99.
SOAK_MINUTES ?= 10
SOAK_RATE ?= 4
soak: $(STAMP) system-deps
	$(BIN)/python -m tests.chaos.soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE)

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Remove the venv, the dev environment and its database (records refer to .dev's files).
clean:
	rm -rf $(VENV) .dev var .pytest_cache .mypy_cache .ruff_cache
	-psql -h 127.0.0.1 -U postgres -q -c 'DROP DATABASE IF EXISTS hocba WITH (FORCE)'
