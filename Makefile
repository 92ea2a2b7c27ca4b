# Every target builds what it needs itself: a fresh machine has only Python, pip, git and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUFF_OPTS := --line-length 100 --target-version py310
RUFF_RULES := --select E,F,W,I,B,UP,SIM,RUF,S,BLE --ignore S101,S105,S106,S311,S603,S607,S104,RUF012

.PHONY: install lint format typecheck unit test demo bench clean

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(RUFF_OPTS) $(RUFF_RULES) genesys_token tests examples
	$(BIN)/ruff format $(RUFF_OPTS) --check genesys_token tests examples

format: $(STAMP)
	$(BIN)/ruff check $(RUFF_OPTS) $(RUFF_RULES) --fix genesys_token tests examples
	$(BIN)/ruff format $(RUFF_OPTS) genesys_token tests examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict genesys_token

# coverage starts before pytest, so the package imported by the pytest11 plugin entry point is
# measured too; subprocesses and forked children report through coverage's patches.
unit: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --fail-under=90

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-* .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache *.egg-info
