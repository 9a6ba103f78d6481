# learnloop: every command the README shows. `make demo` and `make test` do all set-up themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export LEARNLOOP_HOME ?= $(CURDIR)/.learnloop
# the CPU build of torch 2.13.0 lies here; pip takes it from this folder instead of a CUDA build
WHEELS ?= /opt/wheels
PIP_FLAGS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
PYTEST_ARGS ?=

.PHONY: help install demo test dev serve bench clean browser

help:
	@echo "make demo   - install, then run the whole chain on the embedded default (no server, no key)"
	@echo "make test   - install, then run the whole test suite"
	@echo "make dev    - open the Dagster UI on this project (http://127.0.0.1:3000)"
	@echo "make serve  - start the review web app and log collector (http://127.0.0.1:8000)"
	@echo "make bench  - run the benchmarks in bench/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -e '.[test]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $@

install: $(VENV)/.installed

# Debian's chromium drives the browser tests (no browser download at test time)
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	$(BIN)/learnloop demo

test: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

dev: install
	$(BIN)/learnloop dev

serve: install
	$(BIN)/learnloop serve

bench: install
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .learnloop
