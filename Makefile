# Set-up and checks for rsctool. `make demo` and `make test` work on a fresh machine
# with Python >= 3.10: they create .venv, install torch first (TORCH, a pinned build
# so pip never resolves a multi-GB CUDA wheel by accident), then rsctool with its dev
# extra. Override e.g. `make test TORCH='torch==2.13.0' PYTHON=python3.11`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rsctool-installed
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: install demo test test-fast lint docs bench dist clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt '$(TORCH)'
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## The whole pipeline that exists so far, end to end on the built-in demo dataset.
demo: $(STAMP)
	RSCTOOL="$(VENV)/bin/rsctool" bash examples/demo.sh

## The test suite (gpu tests skip themselves without CUDA).
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check rsctool tests benchmarks examples

## The command-line reference (docs/cli/*.md), generated from the CLI; tests/test_docs.py
## fails when it is out of date. Run after adding or changing an option, and commit.
docs: $(STAMP)
	$(PY) -m rsctool.docgen

bench: $(STAMP)
	$(PY) benchmarks/bench_fbank.py
	$(PY) benchmarks/bench_analyze.py

dist: $(STAMP)
	rm -rf dist
	$(PY) -m build
	$(VENV)/bin/twine check dist/*

clean:
	rm -rf $(VENV) dist build *.egg-info demo-run .pytest_cache .ruff_cache
