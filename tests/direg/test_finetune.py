"""Supervised fine-tuning: the loss goes down, LoRA merges back (resume: test_training_runs.py)."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from helpers import SFT_ROWS

import prosocial_jax as pj
from prosocial_jax.data.rows import DataError
from prosocial_jax.data.sft import load_sft
from prosocial_jax.direg.finetune import FinetuneSettings, finetune


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SFT_ROWS))
    return path


@pytest.fixture
def chat_model(tiny_chat):
    return pj.load_model(tiny_chat.path)


def _leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_examples_mask_only_response_tokens(chat_model, sft_file):
    examples, skipped = load_sft(sft_file, chat_model.tokenizer, max_len=128)
    assert len(examples) == len(SFT_ROWS) and skipped.count == 0
    first = examples[0]
    prompt_ids = pj.models.tokenizer.encode_prompt(chat_model.tokenizer, SFT_ROWS[0]["prompt"])
    assert first.input_ids[: len(prompt_ids)] == prompt_ids
    assert not any(first.loss_mask[: len(prompt_ids)]) and all(first.loss_mask[len(prompt_ids):])
    response = chat_model.tokenizer.decode(
        [t for t, m in zip(first.input_ids, first.loss_mask) if m])
    assert response.startswith("The sky is blue.") and "<|im_end|>" in response


def test_full_finetune_lowers_loss(chat_model, sft_file, tmp_path):
    examples, _ = load_sft(sft_file, chat_model.tokenizer, max_len=128)
    settings = FinetuneSettings(steps=25, batch_size=3, learning_rate=1e-2, warmup_steps=2,
                                checkpoint_every=25)
    tuned, history = finetune(chat_model, examples, settings, tmp_path / "run", progress=False)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert tuned.dtype == chat_model.dtype
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 25 and json.loads(lines[-1])["step"] == 25


def test_lora_finetune_merges_back(chat_model, sft_file, tmp_path):
    examples, _ = load_sft(sft_file, chat_model.tokenizer, max_len=128)
    settings = FinetuneSettings(steps=20, batch_size=3, learning_rate=5e-2, warmup_steps=1,
                                lora_rank=4, lora_targets=("q_proj", "v_proj", "down_proj"),
                                checkpoint_every=20)
    tuned, history = finetune(chat_model, examples, settings, tmp_path / "lora", progress=False)
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    base_layers, tuned_layers = chat_model.params["layers"], tuned.params["layers"]
    assert not np.array_equal(tuned_layers["attn"]["q_proj"]["weight"],
                              base_layers["attn"]["q_proj"]["weight"])
    np.testing.assert_array_equal(tuned_layers["attn"]["k_proj"]["weight"],
                                  base_layers["attn"]["k_proj"]["weight"])
    np.testing.assert_array_equal(tuned.params["embed"]["embedding"],
                                  chat_model.params["embed"]["embedding"])


def test_bad_data(chat_model, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(SFT_ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="broken.jsonl:2: not valid JSON"):
        load_sft(broken, chat_model.tokenizer, max_len=128)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in [
        SFT_ROWS[0], {"prompt": "no answer"}, {"prompt": "", "response": "x"},
        {"prompt": "q", "response": "  "}, SFT_ROWS[1]]))
    examples, skipped = load_sft(partial, chat_model.tokenizer, max_len=128)
    assert len(examples) == 2 and skipped.count == 3
    assert skipped.reasons == {"missing or empty response": [2, 4],
                               "missing or empty prompt": [3]}
    with pytest.raises(DataError, match="nope.jsonl: no such data file"):
        load_sft(tmp_path / "nope.jsonl", chat_model.tokenizer, max_len=128)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        FinetuneSettings(steps=0)


def test_bfloat16_compute_and_data_parallel_mesh(tiny_chat, sft_file, tmp_path):
    single = pj.load_model(tiny_chat.path)
    examples, _ = load_sft(sft_file, single.tokenizer, max_len=128)
    settings = FinetuneSettings(steps=3, batch_size=4, learning_rate=1e-3, warmup_steps=1,
                                checkpoint_every=3)
    plain, plain_history = finetune(single, examples, settings, tmp_path / "one",
                                    progress=False)
    sharded_model = pj.load_model(tiny_chat.path, mesh="4x2")
    spread, spread_history = finetune(sharded_model, examples, settings, tmp_path / "mesh",
                                      progress=False)
    np.testing.assert_allclose([h["loss"] for h in spread_history],
                               [h["loss"] for h in plain_history], rtol=1e-5)
    for a, b in zip(_leaves(plain.params), _leaves(spread.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    low = dataclasses.replace(settings, compute_dtype="bfloat16")
    tuned, history = finetune(single, examples, low, tmp_path / "bf16", progress=False)
    assert {x.dtype for x in _leaves(tuned.params)} == {np.dtype(np.float32)}
    assert abs(history[0]["loss"] - plain_history[0]["loss"]) < 0.05 * plain_history[0]["loss"]

