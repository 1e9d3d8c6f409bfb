# Kiwi's developer entry points. Every target works on a fresh machine with
# Python 3.11+: it creates .venv when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test unit integration typecheck bench clean

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

unit: venv
	$(BIN)/trial tests --exclude tests.integration 2>/dev/null || $(BIN)/trial tests.test_config tests.test_protocol tests.test_flow tests.test_registry tests.test_counter tests.test_ws tests.test_kafka_source tests.test_tap

integration: venv
	$(BIN)/trial tests.integration

typecheck: venv
	$(BIN)/mypy

bench: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info
