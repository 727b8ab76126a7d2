# dopd — one entry point for set-up, demo, tests, lint and generated files.
# Everything slow is cached outside the repo under $(DOPD_CACHE), keyed by version.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DOPD_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/dopd
TORCH_VERSION := 2.15.0
PYTHON_VERSION := $(shell python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV ?= $(DOPD_CACHE)/venv-py$(PYTHON_VERSION)-torch$(TORCH_VERSION)
PY := $(VENV)/bin/python
export VENV DOPD_CACHE

include e2e/cluster/cluster.mk

.PHONY: help setup setup-python demo test test-unit e2e lint typecheck crds bench check-crds

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup-python:  ## create/reuse the venv in $(VENV) and install dopd[dev,worker] (editable)
	@scripts/setup-venv.sh

setup: setup-python cluster-build prometheus-install  ## everything the tests need: venv, Kubernetes binaries, Prometheus

demo: setup-python prometheus-install  ## dopd live on a local cluster (built and cached on first use): helm install, a day of load in minutes, a report
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: setup  ## run the whole suite (unit, property, integration, e2e against the local control plane)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup-python  ## only the tests that need no cluster and no Prometheus
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

lint: setup-python  ## ruff, mypy (strict), the import-layer contracts, shellcheck and hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/shellcheck -x -S warning e2e/cluster/*.sh e2e/cluster/gomod/*/gen.sh scripts/*.sh worker-image/gpu-check.sh .ci/run
	$(VENV)/bin/hadolint worker-image/Dockerfile worker-image/Dockerfile.cpu operator/Dockerfile

crds: setup-python  ## regenerate crds/ from the API types and the chart's generated files (CRD template, values schema, README)
	$(VENV)/bin/dopd crds -o crds/dopd.io_disaggregatedmodels.yaml
	$(PY) scripts/chart_crd.py
	$(PY) scripts/chart_values.py

bench: setup-python  ## run the benchmarks and rewrite docs/benchmarks/*.md
	$(PY) bench/planner_bench.py
	$(PY) bench/forecast_bench.py
	$(PY) bench/worker_bench.py
	$(PY) bench/sim_bench.py
	$(PY) bench/held_out.py
	$(PY) bench/capacity_bench.py
	$(PY) bench/overload_bench.py
	$(MAKE) cluster-build prometheus-install
	$(PY) bench/operator_bench.py
	$(PY) -m pytest tests/operator/test_bench_planner.py --benchmark-enable -q
