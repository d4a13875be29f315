# The targets the README and CI run: `make deps` once (with the network), then `make demo`
# (the whole flow) and `make test` (the tests), which need no network after it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The AsyncAPI parser's install (tools/asyncapi): defined before `deps` names it.
ASYNCAPI_STAMP := tools/asyncapi/node_modules/.installed

.PHONY: deps demo test unit integration lint format typecheck system-deps services clean bench bench-quick chaos soak fresh-check district

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Everything the demo and the tests need: the Debian packages (PostgreSQL, RabbitMQ and
## Mosquitto included) and the virtual environment. Starts nothing; quick when all is there.
deps: system-deps $(STAMP) $(ASYNCAPI_STAMP)

## The AsyncAPI project's parser that tests/unit/test_schemas.py runs (tools/asyncapi);
## installed again only when its lock file changes, so offline runs never wait on npm.
.PHONY: asyncapi-deps
asyncapi-deps: $(ASYNCAPI_STAMP)
$(ASYNCAPI_STAMP): tools/asyncapi/package-lock.json | system-deps
	cd tools/asyncapi && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## The Debian packages alone (scripts/system-deps.sh lists them, and why).
system-deps:
	./scripts/system-deps.sh

## Start the machine's PostgreSQL, RabbitMQ and Mosquitto if they are not running (CI; the
## demo and the tests start private ones themselves when these cannot serve).
services:
	./scripts/services.sh

demo: deps
	$(BIN)/hocba-signer demo --records 50 --schools 3 --json

test: deps lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: deps
	$(BIN)/pytest tests/integration

## The two commands on a bare Debian 12 (debootstrap under var/fresh/, root): `make deps`
## with the network, then `make demo` and `make test` with loopback only.
fresh-check:
	./scripts/fresh-check.sh

## Throughput: HSM raw vs plain pyHanko vs the signing path vs the daemon (1 and 2
## instances) on the real services; one JSON document on stdout, a table on stderr.
bench: $(STAMP) system-deps services
	$(BIN)/python -m bench.run

## The same in under a minute (fewer records, no paced run).
bench-quick: $(STAMP) system-deps services
	$(BIN)/python -m bench.run --quick

## 500 schools with rosters through both deadlines on an accelerated clock: the deadline
## alerts and the "Will miss the next deadline" panel, evaluated by promtool, must name
## exactly the schools the simulation's ground truth names (tools/district/). JSON on stdout.
DISTRICT_SCHOOLS ?= 500
district: $(STAMP) system-deps services
	$(BIN)/python -m tools.district --schools $(DISTRICT_SCHOOLS)

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
