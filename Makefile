# tokenfleet — the commands. `make run` starts the fleet, `make test` checks it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench bench-client lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,flower,embedded,browser]'
	touch $(STAMP)

install: $(STAMP)

## run: migrate, load fleet.toml, and start beat + a light worker + a browser worker here.
run: $(STAMP)
	$(BIN)/tokenfleet up

## test: the whole suite against the local Redis and Postgres (see README).
test: $(STAMP)
	$(BIN)/pytest -q

## test-fast: everything but the tests that start worker/beat processes.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m 'not worker'

## bench: rotations per second vs a raw Celery no-op, same run.
bench: $(STAMP)
	$(BIN)/python bench/throughput.py

## bench-client: the 401 path (overhead, stampede, reads) against its baselines.
bench-client: $(STAMP)
	$(BIN)/python bench/client.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
