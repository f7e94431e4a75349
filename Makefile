# Two entry points for a newcomer (see README.md):
#   make demo   sets everything up, then runs a continual-learning comparison
#   make test   sets everything up, then runs the test suite
# Both are idempotent: `scripts/bootstrap.sh` reinstalls nothing when the
# environment is already up to date.

SHELL := /bin/bash
VENV ?= .venv
# The offline data beside the checkout, when it exists (MNIST, Omniglot subsets).
SHARED_DATA := $(abspath ../shared/data)
export AVALANCHE_META_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench-quick clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/avalanche-meta compare naive replay ewc si lwf agem er mer \
		--set er.mem_size=200 --set mer.mem_size=200 \
		--benchmark split-digits --scenario class --seeds 3 --out runs/main-job

test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow" -n 2 --timeout 900 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/black --check avalanche_meta tests examples

clean:
	rm -rf $(VENV) .cache runs
