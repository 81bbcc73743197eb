# Two commands for a newcomer:  `make run` (pipeline, then a search)  and  `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
TOOLS := .venv-tools
BIN := $(VENV)/bin
QUERY ?= a foggy forest at dawn

.PHONY: setup tools system-deps lint test test-unit test-e2e run fixture-run bench clean

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Validators for the deployment artefacts live in their own venv so their pins never fight the app's.
tools: $(TOOLS)/.installed
$(TOOLS)/.installed: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet -r requirements-tools.txt
	touch $@

# Headless Chromium (browser test of the chat page) and Prometheus/promtool (rules, live scrape) from Debian.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v promtool >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium prometheus >/dev/null; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: setup
	$(BIN)/pytest -m "not e2e" -q

test-e2e: setup tools system-deps
	$(BIN)/pytest -m e2e -q

test: lint test-unit test-e2e

# The main job: the DVC pipeline (download -> embed -> build_index -> evaluate -> register), then a search.
run: setup
	$(BIN)/dvc repro
	$(BIN)/clipsearch search "$(QUERY)"

# The same pipeline against a generated Unsplash Lite fixture served on 127.0.0.1 and a tiny random CLIP:
# proves the whole loop on a machine that cannot reach unsplash.com or Hugging Face.
fixture-run: setup
	$(BIN)/python -m tests.fixtures.run_fixture_pipeline --query "$(QUERY)"

# Benchmarks print tables and write benchmarks/results/*.json; the last command prints target vs measured.
bench: setup
	$(BIN)/python -m benchmarks.bench_text_encode
	$(BIN)/python -m benchmarks.bench_search --size 25000 --data clustered
	$(BIN)/python -m benchmarks.bench_search --size 25000 --data diffuse
	$(BIN)/python -m benchmarks.bench_search --size 1000000 --no-hnsw --data diffuse
	$(BIN)/python -m benchmarks.bench_service --text-precision bf16 --exact-backend faiss --rates 20,40,60 --duration 15
	$(BIN)/python -m benchmarks.bench_rerank
	$(BIN)/python -m benchmarks.bench_embed
	$(BIN)/python -m benchmarks.report

clean:
	rm -rf data reports metrics.json mlflow.db mlruns mlartifacts
