# Kiwi's developer entry points. Every target works on a fresh machine with
# Python 3.11+: it creates .venv when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: venv run test integration typecheck bench bench-quick bench-flow clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/python demo/run.py

test: venv
	$(BIN)/trial --jobs 2 tests

integration: venv
	$(BIN)/trial tests.integration

typecheck: venv
	$(BIN)/mypy

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# The benchmarks (docs/performance.md): about 15 minutes; needs gcc.
# `make bench BENCH_ARGS=--quick` (or `make bench-quick`) is a ~2-minute smoke run.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

# Slow clients: 20 stalled + 1 reading client, 30,000 records of 1 KB
# (own broker and Kiwi; loopback only; stops by itself within 5 minutes).
bench-flow: venv
	$(BIN)/python -m benchmarks.slow_clients

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info
