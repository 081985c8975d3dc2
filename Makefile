# One command each for the demo and the tests; both build .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit lint generate bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/federation demo --workdir demo-output

test: $(STAMP)
	$(BIN)/ruff check federation dags tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=15

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check federation dags tests bench
	$(BIN)/mypy

generate: $(STAMP)
	$(BIN)/federation schema generate

bench: $(STAMP)
	$(BIN)/python bench/validate_1m.py
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/ingest_throughput.py --backend seaweedfs
	$(BIN)/python bench/query_latency.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
