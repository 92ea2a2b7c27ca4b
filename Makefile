# Every target builds what it needs itself: a fresh machine has only Python, pip, git and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUFF_OPTS := --line-length 100 --target-version py310
RUFF_RULES := --select E,F,W,I,B,UP,SIM,RUF,S,BLE --ignore S101,S105,S106,S311,S603,S607,S104,RUF012

# urllib3 1.26 is still supported (requests 2.32, our lowest, still allows it; requests 2.32 is
# the first that keys its connection pools by TLS settings: CVE-2024-35195).
LEGACY_VENV ?= .venv-legacy
LEGACY_BIN := $(LEGACY_VENV)/bin
LEGACY_STAMP := $(LEGACY_VENV)/.installed
LEGACY_PINS := 'urllib3>=1.26.5,<2' 'requests>=2.32.4,<2.33'
LEGACY_TESTS := tests/test_transport.py tests/test_retry.py tests/test_tls.py \
	tests/test_secret_hygiene.py tests/test_redact.py tests/test_auth.py tests/test_manager.py \
	tests/test_api_session.py

# The unit suite on the oldest and newest Pythons we declare (setup.cfg classifiers), each in
# its own venv, when pyenv has them (the development and CI machines do). No coverage gate:
# `unit` measures coverage.
PYENV_ROOT ?= $(HOME)/.pyenv
TEST_VERSIONS ?= 3.10 3.13
python_for = $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python)))
FOUND_VERSIONS := $(foreach v,$(TEST_VERSIONS),$(if $(call python_for,$(v)),$(v)))

# The core dependencies at exactly their declared lower bounds (setup.cfg install_requires,
# read by .ci/lower_bounds.py), on the oldest Python we support: a lower bound is a promise.
MINIMUM_VENV ?= .venv-minimum
MINIMUM_BIN := $(MINIMUM_VENV)/bin
MINIMUM_STAMP := $(MINIMUM_VENV)/.installed
MINIMUM_PYTHON := $(or $(call python_for,3.10),$(PYTHON))
MINIMUM_TEST_DEPS := 'pytest>=7.4' 'pytest-timeout>=2.2' 'pytest-xdist>=3.5' 'trustme>=1.1'

# Most tests wait (on sockets, deadlines, other processes) rather than compute: four workers
# keep two cores busy. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 4
XDIST := -n $(PYTEST_WORKERS)
MINIMUM_TESTS := $(LEGACY_TESTS) tests/test_validation.py tests/test_config.py \
	tests/test_logging.py tests/test_events.py tests/test_rotation.py tests/test_core.py \
	tests/test_file_store.py tests/test_cli.py tests/test_redis_store.py tests/test_redis_tls.py \
	tests/test_netrc_redirect.py tests/test_webhook.py tests/test_fork.py

.PHONY: install lint format typecheck unit soak test test-legacy test-versions test-minimum \
	demo bench clean

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(RUFF_OPTS) $(RUFF_RULES) genesys_token tests examples benchmarks
	$(BIN)/ruff format $(RUFF_OPTS) --check genesys_token tests examples benchmarks

format: $(STAMP)
	$(BIN)/ruff check $(RUFF_OPTS) $(RUFF_RULES) --fix genesys_token tests examples benchmarks
	$(BIN)/ruff format $(RUFF_OPTS) genesys_token tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict genesys_token

# coverage starts before pytest, so the package imported by the pytest11 plugin entry point is
# measured too; subprocesses and forked children report through coverage's patches.
unit: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest $(XDIST) -m "not slow"
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --fail-under=90

test: lint typecheck unit soak test-legacy

# Long soak tests (20,000 refreshes under tracemalloc, ten seconds of 4-second tokens, the
# benchmarks' quick run), without coverage's tracer, which would double their time. One file
# per worker: the benchmark smoke tests share one module-scoped quick run, which workers
# each running some of them made three times over (65 s each beside the 20,000 refreshes).
soak: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) --dist loadfile -m slow

$(LEGACY_STAMP): setup.cfg setup.py pyproject.toml
	rm -rf $(LEGACY_VENV)
	$(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_BIN)/python -m pip install -q --upgrade pip
	$(LEGACY_BIN)/python -m pip install -q -e '.[dev]' $(LEGACY_PINS)
	touch $@

# The transport, TLS, auth, manager and secret-hygiene tests once more on urllib3 1.26 (no
# coverage gate: the main run measures coverage).
test-legacy: $(LEGACY_STAMP)
	$(LEGACY_BIN)/python -c 'import sys, urllib3; sys.exit(urllib3.__version__[:5] != "1.26.")'
	$(LEGACY_BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) $(LEGACY_TESTS)

.venv-py%/.installed: setup.cfg setup.py pyproject.toml
	rm -rf .venv-py$*
	$(call python_for,$*) -m venv .venv-py$*
	.venv-py$*/bin/python -m pip install -q --upgrade pip
	.venv-py$*/bin/python -m pip install -q -e '.[dev]'
	touch $@

test-versions: $(foreach v,$(FOUND_VERSIONS),.venv-py$(v)/.installed)
	@echo "test-versions: Python $(or $(FOUND_VERSIONS),(none of $(TEST_VERSIONS) found))"
	$(foreach v,$(FOUND_VERSIONS),.venv-py$(v)/bin/python -m pytest -q -p no:cacheprovider \
		$(XDIST) -m "not slow" &&) true

$(MINIMUM_STAMP): setup.cfg setup.py pyproject.toml .ci/lower_bounds.py
	rm -rf $(MINIMUM_VENV)
	$(MINIMUM_PYTHON) -m venv $(MINIMUM_VENV)
	$(MINIMUM_BIN)/python -m pip install -q --upgrade pip
	$(MINIMUM_BIN)/python -m pip install -q -e . $$($(MINIMUM_BIN)/python .ci/lower_bounds.py \
		--pins) $(MINIMUM_TEST_DEPS)
	touch $@

test-minimum: $(MINIMUM_STAMP)
	$(MINIMUM_BIN)/python .ci/lower_bounds.py --check
	$(MINIMUM_BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) $(MINIMUM_TESTS)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-* .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache *.egg-info
