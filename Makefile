# xpool: every command a user needs. `make` alone prints this help.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= embedded-quick
PYTHON ?= python3
export OMP_WAIT_POLICY ?= PASSIVE
# Bit-identical results across CPUs: torch's CPU kernels capped at AVX2 (see xpool/determinism.py)
# for the study, the tests and the notebooks; `make bench` measures what the machine can do, so it
# runs uncapped unless you set XPOOL_CPU_ISA yourself (its JSON records the capability used).
STUDY_ENV := XPOOL_CPU_ISA=$${XPOOL_CPU_ISA:-avx2}

.DEFAULT_GOAL := help
.PHONY: help setup setup-browser test lint reproduce figures report lab bench clean lock

help:  ## list the targets
	@echo "xpool: X-Pool reproducibility study"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: PROFILE=embedded-quick (reproduce/figures/report; PROFILE=embedded: the full study), FRESH=1 (reproduce: retrain even the runs this machine made), QUICK=1 (bench)"

setup:  ## create .venv, install the package (editable, dev extras) from the lock, register the 'xpool' Jupyter kernel
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev,bench,scale]"
	$(PY) -m ipykernel install --sys-prefix --name xpool --display-name "Python (xpool)"
	$(PY) -m xpool.determinism --kernel-env xpool
	@echo "setup done: activate with 'source $(VENV)/bin/activate'"

# Debian's chromium for the real-browser tests (tests/test_browser.py). Playwright itself is in the
# dev extra; it cannot download its own browser here, so the tests launch CHROMIUM instead.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
setup-browser:  ## install Debian's chromium (apt) and check that Playwright drives it headless
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium
	XPOOL_CHROMIUM=$(CHROMIUM) $(PY) tests/test_browser.py

test:  ## ruff + import contracts (lint-imports) + the whole test suite (unit, integration, notebooks)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo
	$(STUDY_ENV) $(PY) -m pytest -q

lint:  ## ruff only
	$(VENV)/bin/ruff check .

reproduce:  ## train every run of PROFILE (default embedded-quick, under 5 min; embedded: the full study) on this machine, then compare with the committed results
	$(STUDY_ENV) $(VENV)/bin/xpool reproduce $(PROFILE) $(if $(FRESH),--fresh)

figures:  ## re-render tables and figures of PROFILE from the committed run records (no training)
	$(STUDY_ENV) $(VENV)/bin/xpool reproduce $(PROFILE) --figures-only

report:  ## the static site results/PROFILE/report/index.html from the executed notebooks and tables (make reproduce builds it too)
	$(PY) -m xpool.report $(PROFILE)

lab:  ## open JupyterLab on the notebooks with the xpool kernel (LAB_OPTS: extra jupyter lab options)
	$(STUDY_ENV) $(VENV)/bin/jupyter lab --KernelManager.transport_encryption=required $(LAB_OPTS) notebooks/

bench:  ## performance benchmarks (QUICK=1: under 2 minutes)
	$(PY) -m bench.suite $(if $(QUICK),--quick)

lock:  ## regenerate requirements.lock from the current .venv
	@{ echo "# Exact versions of every package in a working environment (Python 3.11, x86_64)."; \
	   echo "# Regenerate with: make lock. Installed by: make setup (pip install -c requirements.lock)."; \
	   $(PY) -m pip freeze --exclude-editable | grep -v '^-e' | grep -vi '^xpool' | sort -f; } > requirements.lock

clean:  ## remove caches and generated data (keeps committed results)
	rm -rf data cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
