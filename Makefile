# Two commands for a newcomer:  `make run` (pipeline, then a search)  and  `make test` (everything CI runs).
# Both work from a plain shell: every recipe below runs with the project's venv first on PATH, so the
# `python` in dvc.yaml's stage commands is .venv's interpreter whoever calls `dvc repro` through make.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
TOOLS ?= .venv-tools
NETPOL ?= .venv-netpol
BIN := $(abspath $(VENV))/bin
QUERY ?= a foggy forest at dawn
# `make run LIMIT=2000`: a quick subset instead of the whole Unsplash Lite set (params.yaml's dataset.limit).
LIMIT ?=
# Browser for the chat-page tests. Debian: `chromium` (installed by system-deps); GitHub's Ubuntu runners ship
# Google Chrome (Ubuntu's `chromium` package is only a snap stub): `make test CHROMIUM=/usr/bin/google-chrome`.
CHROMIUM ?= /usr/bin/chromium

export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))
export CLIPSEARCH_TEST_BROWSER := $(CHROMIUM)
export CLIPSEARCH_TOOLS_BIN := $(abspath $(TOOLS))/bin
export CLIPSEARCH_NETPOL_BIN := $(abspath $(NETPOL))/bin
unexport PYTHONHOME

.PHONY: setup tools system-deps lint test test-unit test-infra test-e2e run fixture-run bench bench-soak sbom audit clean

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Validators for the deployment artefacts live in their own venv so their pins never fight the app's; the
# NetworkPolicy analyzer has a third (its networkx pin cannot meet checkov's).
tools: $(TOOLS)/.installed $(NETPOL)/.installed
$(TOOLS)/.installed: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet -r requirements-tools.txt
	touch $@
$(NETPOL)/.installed: requirements-netpol.txt
	$(PYTHON) -m venv $(NETPOL)
	$(NETPOL)/bin/pip install --quiet --upgrade pip
	$(NETPOL)/bin/pip install --quiet -r requirements-netpol.txt
	touch $@

# The browser (chat-page tests) and Prometheus/promtool (rules, live scrape), from the distribution's packages.
system-deps:
	@missing=""; \
	  [ -x "$(CHROMIUM)" ] || missing="$$missing chromium"; \
	  command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	  if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing$$missing (apt-get)"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	      || { echo "could not install$$missing: install them yourself (Debian/Ubuntu: apt-get install$$missing), or point CHROMIUM=/path/to/chrome at a browser you have"; exit 1; }; \
	  fi
	@[ -x "$(CHROMIUM)" ] || { echo "no browser at CHROMIUM=$(CHROMIUM): install Debian's chromium, or run make with CHROMIUM=/path/to/chrome (GitHub's Ubuntu runners: /usr/bin/google-chrome)"; exit 1; }

lint: setup
	ruff check .
	ruff format --check .
	mypy

# Unit tier: in-process, no external tools, seconds each.
test-unit: setup
	pytest -m "not e2e and not infra" -q

# Deployment artefacts through their real validators (kustomize, kubernetes-validate, checkov, hadolint,
# actionlint, zizmor, promtool, python-hcl2) and semantic checks of what a cluster would do with them.
test-infra: setup tools system-deps
	pytest -m infra -q

# Real processes on loopback: dvc repro, mlflow server, uvicorn, a Gemini stand-in, the browser, Prometheus.
test-e2e: setup system-deps
	pytest -m "e2e and not infra" -q

test: lint test-unit test-infra test-e2e

# Supply chain, CI's own job (not part of `make test`: the audit needs PyPI's and OSV's vulnerability APIs).
# sbom: a CycloneDX 1.6 JSON SBOM of the installed environment (.venv: every package the service imports).
# audit: pip-audit over every pin in constraints.txt (no resolution), then tools/audit_policy.py: each finding is
# reported with its OSV severity; the target fails on a critical one that has a fixed version.
sbom: setup
	mkdir -p reports
	cyclonedx-py environment --output-format JSON --output-reproducible --output-file reports/sbom.cdx.json $(BIN)/python
audit: setup
	mkdir -p reports
	rm -f reports/pip-audit.json
	pip-audit --requirement constraints.txt --no-deps --disable-pip --progress-spinner off \
	  --format json --output reports/pip-audit.json || [ -s reports/pip-audit.json ]
	python -m tools.audit_policy reports/pip-audit.json --summary reports/audit-summary.json

# The main job: the DVC pipeline (download -> embed -> build_index -> evaluate -> register), then a search.
# Offline, the preflight stops with one paragraph and exit code 2 before DVC starts.
# LIMIT goes through DVC (`exp run --set-param` writes it to params.yaml), so DVC knows the stage inputs changed.
run: setup
	@python -m training.preflight
	$(if $(LIMIT),dvc exp run --set-param dataset.limit=$(LIMIT),dvc repro)
	clipsearch search "$(QUERY)"

# The same pipeline against a generated Unsplash Lite fixture served on 127.0.0.1 and a tiny random CLIP:
# proves the whole loop on a machine that cannot reach unsplash.com or Hugging Face.
fixture-run: setup
	python -m tests.fixtures.run_fixture_pipeline --query "$(QUERY)"

# Benchmarks print tables and write benchmarks/results/*.json; the last command prints target vs measured.
bench: setup
	python -m benchmarks.bench_text_encode
	python -m benchmarks.bench_search --size 25000 --data clustered
	python -m benchmarks.bench_search --size 25000 --data diffuse
	python -m benchmarks.bench_search --size 1000000 --no-hnsw --data diffuse
	python -m benchmarks.bench_filters --size 25000 --kinds exact,exact_faiss,hnsw,ivf --hybrid
	python -m benchmarks.bench_filters --size 1000000 --kinds exact --queries 100
	python -m benchmarks.bench_service --rates 20,40,60 --duration 15
	python -m benchmarks.bench_rerank
	python -m benchmarks.bench_embed
	python -m benchmarks.bench_query_by_example --parts encode,compose
	python -m benchmarks.bench_query_by_example --parts http --exact-backend faiss
	python -m benchmarks.report

# Soak: 10 minutes at half the measured capacity; memory growth, open fds and p99 per minute (README figures).
bench-soak: setup
	python -m benchmarks.bench_soak --minutes 10

clean:
	rm -rf data reports metrics.json mlflow.db mlruns mlartifacts
