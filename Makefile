# xpool: every command a user needs. `make` alone prints this help.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= embedded
PYTHON ?= python3
export OMP_WAIT_POLICY ?= PASSIVE

.DEFAULT_GOAL := help
.PHONY: help setup test lint reproduce figures lab bench clean lock

help:  ## list the targets
	@echo "xpool: X-Pool reproducibility study"
	@echo
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: PROFILE=embedded (reproduce/figures), FRESH=1 (reproduce: recompute), QUICK=1 (bench)"

setup:  ## create .venv, install the package (editable, dev extras) from the lock, register the 'xpool' Jupyter kernel
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev,bench,scale]"
	$(PY) -m ipykernel install --sys-prefix --name xpool --display-name "Python (xpool)"
	@echo "setup done: activate with 'source $(VENV)/bin/activate'"

test:  ## ruff + the whole test suite (unit, integration, notebooks)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint:  ## ruff only
	$(VENV)/bin/ruff check .

reproduce:  ## run the study for PROFILE (default embedded) with papermill; FRESH=1 recomputes
	$(VENV)/bin/xpool reproduce $(PROFILE) $(if $(FRESH),--fresh)

figures:  ## re-render tables and figures of PROFILE from saved runs (no training)
	$(VENV)/bin/xpool reproduce $(PROFILE) --figures-only

lab:  ## open JupyterLab on the notebooks with the xpool kernel
	$(VENV)/bin/jupyter lab notebooks/

bench:  ## performance benchmarks (QUICK=1: under 2 minutes)
	$(VENV)/bin/xpool bench $(if $(QUICK),--quick)

lock:  ## regenerate requirements.lock from the current .venv
	@{ echo "# Exact versions of every package in a working environment (Python 3.11, x86_64)."; \
	   echo "# Regenerate with: make lock. Installed by: make setup (pip install -c requirements.lock)."; \
	   $(PY) -m pip freeze --exclude-editable | grep -v '^-e' | grep -vi '^xpool' | sort -f; } > requirements.lock

clean:  ## remove caches and generated data (keeps committed results)
	rm -rf data cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
