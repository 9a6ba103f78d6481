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

.PHONY: help install lock lint demo test dev serve mlflow bench bench-ingest bench-embeddings bench-vectors bench-audit-teach bench-audit-days bench-llm bench-pii bench-collector bench-auditor bench-training clean browser

help:
	@echo "make demo   - install, then run the whole chain on the embedded default (no server, no key)"
	@echo "make test   - install, then lint and run the whole test suite"
	@echo "make lint   - ruff check . (rules in pyproject.toml [tool.ruff])"
	@echo "make dev    - open the Dagster UI on this project (http://127.0.0.1:3000)"
	@echo "make serve  - start the review web app and log collector (http://127.0.0.1:8000)"
	@echo "make mlflow - open the MLflow UI on this project's tracking store and model registry"
	@echo "              (http://127.0.0.1:$(MLFLOW_PORT); MLFLOW_PORT=5001 make mlflow for another port)"
	@echo "make bench  - the whole chain stage by stage at 10k/100k/1M interactions, generated and"
	@echo "              realistic data: wall, CPU-seconds, peak RSS (bench/chain.py; hours at 1M)"
	@echo "make bench-ingest - ingest alone at 1M interactions vs the naive path (bench/ingest.py)"
	@echo "make bench-embeddings / bench-vectors / bench-audit-teach / bench-llm - one stage's"
	@echo "              benchmark (docs/embeddings.md, vector-search.md, scale-audit-teach.md, providers.md)"
	@echo "make bench-pii - PII recall/precision of ml.pii vs Presidio on labelled texts (bench/pii.py)"
	@echo "make bench-collector - the log collector under load, from a separate process (bench/collector.py)"
	@echo "make bench-auditor - the offline rules auditor on public labelled sets (bench/auditor_eval.py)"
	@echo "make bench-training - pretraining and LoRA throughput, the demo's training and evaluation time (bench/training.py)"
	@echo "make lock   - recompile requirements.lock from pyproject.toml (+ test extra), keeping its pins;"
	@echo "              LOCK_ARGS=--upgrade-package NAME (or --upgrade) moves pins, then run make test"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the tested set from requirements.lock, then the project itself without re-resolving anything
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -m pip install -q $(PIP_FLAGS) -r requirements.lock 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -m pip install -q --no-deps -e . 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $@

install: $(VENV)/.installed

# pip-compile runs from a throwaway venv, never the project's. pip-compile keeps the pins that are
# already in requirements.lock unless LOCK_ARGS asks to upgrade; extra pip-compile options (e.g.
# `-c constraints.txt`) go in LOCK_ARGS too. The find-links folder and index URLs are machine
# facts, so they are not written into the lock.
LOCK_ARGS ?=
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp" && \
	"$$tmp/bin/python" -m pip install -q --upgrade pip 'pip-tools>=7.5,<8' 2>&1 | { grep -v 'is ignored: it is neither' || true; } && \
	CUSTOM_COMPILE_COMMAND="make lock" "$$tmp/bin/pip-compile" -q $(PIP_FLAGS) --extra test \
	  --no-emit-find-links --no-emit-index-url --strip-extras --allow-unsafe $(LOCK_ARGS) \
	  -o requirements.lock pyproject.toml

# Debian's chromium drives the browser tests (no browser download at test time)
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	$(BIN)/learnloop demo

lint: install
	$(BIN)/ruff check .

# lint first, so CI (.ci/run) fails on findings before the long suite starts
test: lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

dev: install
	$(BIN)/learnloop dev

serve: install
	$(BIN)/learnloop serve

# the MLflow UI (a tracking server) on $(LEARNLOOP_HOME)/mlflow.db: runs, the registered model's
# versions and aliases; run artifacts are read from $(LEARNLOOP_HOME)/mlartifacts (the artifact
# root of learnloop's experiments, ml/registry.py)
# one worker and no job runner (its 7 huey consumers serve GenAI scorers and trace rollups, not
# runs, the registry or artifacts): a local UI for one engineer, light on a small machine
MLFLOW_PORT ?= 5000
mlflow: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
	  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(LEARNLOOP_HOME)/mlflow.db \
	  --default-artifact-root $(LEARNLOOP_HOME)/mlartifacts \
	  --artifacts-destination $(LEARNLOOP_HOME)/mlartifacts \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# the whole chain stage by stage (ingest, embeddings, audit, teach, analytics) at 10k/100k/1M
# interactions on the generated and the realistic profile: wall, CPU-seconds, peak RSS
# (docs/benchmarks.md). Hours at 1M: BENCH_SIZES=10000,100000 make bench for a shorter run.
BENCH_SIZES ?= 10000,100000,1000000
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/chain.py --sizes $(BENCH_SIZES) --profiles generated,realistic \
	  $(if $(wildcard ../shared/data),--corpus ../shared/data,) $(BENCH_ARGS)

# ingest alone at 1M generated interactions, against the naive per-record path
bench-ingest: install
	$(BIN)/python bench/ingest.py

# embedding backends (MiniLM, int8, static model2vec) on the same texts: throughput and agreement
# with MiniLM per consuming stage (docs/embeddings.md)
bench-embeddings: install
	$(BIN)/python bench/embeddings.py --limit 1000

# LanceDB: ANN index types against exact search, batched vs one-by-one queries (docs/vector-search.md)
bench-vectors: install
	$(BIN)/python bench/vector_search.py --n 200000

# audited_errors and teacher_samples against the code before issue 13 (docs/scale-audit-teach.md)
bench-audit-teach: install
	$(BIN)/python bench/audit_teach.py --sizes 10000 100000 --delta 2000 --old-ref 8f19d9f

# the audit partitioned by landing day: two days side by side against one run of both, on a
# DuckLake (PostgreSQL at LEARNLOOP_TEST_POSTGRES_URL or 127.0.0.1:5432/test)
bench-audit-days: install
	$(BIN)/python bench/audit_days.py --n-per-day 10000 --days 2 \
	  $(if $(wildcard ../shared/data),--corpus ../shared/data,)

# concurrent LLM calls against a stand-in server with a fixed latency (docs/providers.md)
bench-llm: install
	$(BIN)/python bench/llm_concurrency.py

bench-pii: install
	$(BIN)/python bench/pii.py --n 3000 $(if $(wildcard ../shared/data),--real ../shared/data,)

# the log collector under load (a uvicorn process driven from another): docs/benchmarks.md
bench-collector: install
	$(BIN)/python bench/collector.py

# the offline rules auditor on public labelled sets (oasst1, hh-rlhf): docs/auditing.md
bench-auditor: install
	$(BIN)/python bench/auditor_eval.py

# pretraining and LoRA throughput (generated and oasst1 data) and the demo's training_job
# step times (about 20 minutes): docs/benchmarks.md
bench-training: install
	$(BIN)/python bench/training.py $(if $(wildcard ../shared/data),--real ../shared/data,) --demo

clean:
	rm -rf $(VENV) .learnloop
