"""pj.generate: greedy parity with transformers, sampling semantics, stopping, no recompiles,
batch buckets, non-finite logits."""


import jax
import numpy as np
import pytest
from helpers import VOCAB, hf_greedy, with_nan_embedding

import prosocial_jax as pj
from prosocial_jax.decoding import decode

PROMPTS = [[5, 17, 99, 3, 42], [7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]




def test_greedy_equals_transformers_generate(tiny):
    """The default layout on CPU (unrolled per-layer weights and caches); the scanned stacked
    one is checked against transformers by the chunked-prefill test below."""
    model = pj.load_model(tiny.path)
    results = pj.generate(model, PROMPTS, max_new_tokens=32, chunk_size=8)  # config eos: 2
    for prompt, result in zip(PROMPTS, results):
        reference = hf_greedy(tiny.torch_model, prompt, 32)
        assert result.tokens == reference
        assert result.finish_reason == ("stop" if reference[-1] == 2 else "length")
        assert result.prompt_tokens == len(prompt)
        assert result.completion_tokens == len(reference)
    # Without a stop token both run the full 32 steps.
    results = pj.generate(model, PROMPTS, max_new_tokens=32, chunk_size=8, stop_tokens=[])
    for prompt, result in zip(PROMPTS, results):
        assert result.tokens == hf_greedy(tiny.torch_model, prompt, 32, eos_token_id=VOCAB + 1)
        assert result.finish_reason == "length" and result.completion_tokens == 32


def test_chunked_prefill_equals_transformers_generate(tiny, monkeypatch):
    """Prompts prefilled 4 tokens at a time (each chunk attending to the cache the earlier
    ones wrote, in blocks of 8 slots, skipping blocks outside the tiny Mistral's sliding window
    of 6) give transformers' tokens, in both layer layouts (per-layer, the CPU default, and the
    scanned stacked one); the chunk sizes cover the prompt with little padding."""
    from prosocial_jax.models import decoder

    monkeypatch.setattr(decoder, "KEY_BLOCK", 8)  # the 40 prompt slots in 5 blocks
    jax.clear_caches()  # programs traced with the default block would be reused otherwise
    model = pj.load_model(tiny.path)
    long_prompt = list(range(3, 40))  # 37 tokens: 40 slots in 10 chunks of 4
    assert decode.prefill_chunks(37, 4) == (40, 4)
    assert decode.prefill_chunks(600, 512) == (640, 320)  # 2 x 300, rounded up to 32s
    assert decode.prefill_chunks(500, 512) == (512, 512)
    for layer_layout in ("per_layer", "stacked"):
        results = pj.generate(model, [*PROMPTS, long_prompt], max_new_tokens=12, chunk_size=4,
                              stop_tokens=[], layer_layout=layer_layout, prefill_chunk=4)
        for prompt, result in zip([*PROMPTS, long_prompt], results):
            assert result.tokens == hf_greedy(tiny.torch_model, prompt, 12,
                                              eos_token_id=VOCAB + 1), layer_layout
    # Automatic chunks: PREFILL_CHUNK tokens, shorter where one layer's float32 self-scores
    # (rows x heads x chunk x chunk) would pass the budget, in whole prompt buckets.
    assert decode.auto_prefill_chunk(9, budget=512 * 2**20) == decode.PREFILL_CHUNK == 512
    assert decode.auto_prefill_chunk(9 * 64, budget=512 * 2**20) == 480  # 482.7 rounded down
    assert decode.auto_prefill_chunk(9 * 64, budget=2**20) == decode.PROMPT_BUCKET
    assert decode.prefill_chunks(2048, decode.auto_prefill_chunk(27)) == (2048, 512)
    with pytest.raises(ValueError, match="prefill_chunk must be >= 1, got 0"):
        pj.generate(model, PROMPTS, prefill_chunk=0)


def test_stop_token_ends_row_and_is_kept(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    free = pj.generate(model, PROMPTS[:2], max_new_tokens=24, stop_tokens=[])
    stop = free[0].tokens[5]
    first = free[0].tokens.index(stop)
    stopped = pj.generate(model, PROMPTS[:2], max_new_tokens=24, stop_tokens=[stop])
    assert stopped[0].tokens == free[0].tokens[: first + 1]
    assert stopped[0].finish_reason == "stop"
    other = free[1].tokens
    expected = other[: other.index(stop) + 1] if stop in other else other
    assert stopped[1].tokens == expected


def test_batches_and_partial_batches_give_the_same_tokens(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["qwen2"].path)
    together = pj.generate(model, PROMPTS, max_new_tokens=12, stop_tokens=[])
    one_by_one = pj.generate(model, PROMPTS, max_new_tokens=12, batch_size=2, stop_tokens=[])
    assert [r.tokens for r in together] == [r.tokens for r in one_by_one]


def test_sampling_is_seeded_and_reproducible(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["gemma"].path)
    kwargs = dict(max_new_tokens=16, temperature=1.0, stop_tokens=[])
    a = pj.generate(model, PROMPTS, seed=1, **kwargs)
    b = pj.generate(model, PROMPTS, seed=1, **kwargs)
    c = pj.generate(model, PROMPTS, seed=2, **kwargs)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in a] != [r.tokens for r in c]
    top1 = pj.generate(model, PROMPTS, top_k=1, seed=3, **kwargs)
    greedy = pj.generate(model, PROMPTS, max_new_tokens=16, stop_tokens=[])
    assert [r.tokens for r in top1] == [r.tokens for r in greedy]


def test_first_token_distribution_follows_filters(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    prompt = PROMPTS[0]
    logits = np.asarray(model.logits([prompt]))[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    n = 2048
    draws = np.array([r.tokens[0] for r in pj.generate(
        model, [prompt] * n, max_new_tokens=1, temperature=1.0, batch_size=n, seed=0)])
    empirical = np.bincount(draws, minlength=VOCAB) / n
    # Total variation distance between n samples and the true distribution; with n = 2048 and
    # this vocabulary its expected value is ~0.05, so 0.1 fails only on a real mismatch.
    assert 0.5 * np.abs(empirical - probs).sum() < 0.1
    top5 = set(np.argsort(-logits)[:5])
    k_draws = [r.tokens[0] for r in pj.generate(
        model, [prompt] * 256, max_new_tokens=1, temperature=1.0, top_k=5, batch_size=256)]
    assert set(k_draws) <= top5 and len(set(k_draws)) > 1
    order = np.argsort(-probs)
    nucleus = set(order[: np.searchsorted(np.cumsum(probs[order]), 0.6) + 1])
    p_draws = [r.tokens[0] for r in pj.generate(
        model, [prompt] * 256, max_new_tokens=1, temperature=1.0, top_p=0.6, batch_size=256)]
    assert set(p_draws) <= nucleus


def test_changing_sampling_settings_does_not_recompile(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["mistral"].path)
    run = lambda **kw: pj.generate(model, PROMPTS, max_new_tokens=8, stop_tokens=[], **kw)  # noqa: E731
    run(temperature=0.7, top_k=10, top_p=0.9, seed=0)
    sizes = decode.decode_chunk._cache_size(), decode.prefill._cache_size()
    run(temperature=1.3, top_k=3, top_p=0.5, seed=1)
    run(temperature=0.0)
    run(temperature=[0.0, 0.5, 1.0], top_k=[0, 2, 7])  # per-row settings
    assert (decode.decode_chunk._cache_size(), decode.prefill._cache_size()) == sizes


def test_bad_arguments(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    with pytest.raises(ValueError, match="top_p must be in"):
        pj.generate(model, PROMPTS, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        pj.generate(model, PROMPTS, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        pj.generate(model, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        pj.generate(model, PROMPTS, max_new_tokens=500)
    with pytest.raises(ValueError, match="expected a scalar or 3 values"):
        pj.generate(model, PROMPTS, temperature=[0.1, 0.2])
    with pytest.raises(ValueError, match="no tokenizer"):
        pj.generate(model, ["text needs a tokenizer"])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        pj.generate(model, PROMPTS, batch_size=0)
    assert jax.device_count() == 8  # conftest's simulated devices are active


def test_prompt_counts_share_bucketed_programs_and_padding_changes_nothing(tiny_checkpoints):
    """3 and 4 prompts run as one batch of 4, 5 to 7 as one of 8 (padding rows start done): two
    programs each for prefill and the decode chunk, and every row as transformers decodes the
    prompt alone."""
    tiny = tiny_checkpoints["llama"]
    model = pj.load_model(tiny.path)
    rng = np.random.RandomState(5)
    prompts = [rng.randint(3, VOCAB, rng.randint(2, 12)).tolist() for _ in range(7)]
    # 7 steps in one 7-step chunk: a program shape no other test compiles.
    kwargs = dict(max_new_tokens=7, chunk_size=7, stop_tokens=[])
    before = decode.decode_chunk._cache_size(), decode.prefill._cache_size()
    results = {n: pj.generate(model, prompts[:n], **kwargs) for n in (3, 4, 5, 6, 7)}
    after = decode.decode_chunk._cache_size(), decode.prefill._cache_size()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 2)
    alone = [hf_greedy(tiny.torch_model, p, 7, eos_token_id=VOCAB + 1) for p in prompts]
    for n, rows in results.items():
        assert [r.tokens for r in rows] == alone[:n], n




def test_nan_logits_fail_naming_prompt_and_step(tiny_checkpoints):
    tiny = tiny_checkpoints["llama"]  # untied embeddings
    model = pj.load_model(tiny.path)
    steps = 16
    clean = [hf_greedy(tiny.torch_model, p, steps, eos_token_id=VOCAB + 1) for p in PROMPTS]
    # A token that row 1 produces at step i >= 2, that rows 0 and 1 never saw before: feeding it
    # makes row 1's logits NaN at step i + 1; row 0 stays finite.
    index, token = next((i, t) for i, t in enumerate(clean[1][:steps - 1]) if i >= 2
                        and t not in PROMPTS[0] + clean[0] + PROMPTS[1] + clean[1][:i]
                        and t != model.pad_id)
    poisoned = with_nan_embedding(model, token)
    with pytest.raises(decode.NonFiniteError, match=(
            f"prompt 1: the base model's logits contain NaN at decode step {index + 1} ")) as info:
        pj.generate(poisoned, PROMPTS, max_new_tokens=steps, chunk_size=4, stop_tokens=[])
    assert (info.value.prompt, info.value.step) == (1, index + 1)
    # Found on the very last step too (after the host loop has ended).
    with pytest.raises(decode.NonFiniteError, match=f"prompt 1: .* step {index + 1} "):
        pj.generate(poisoned, PROMPTS, max_new_tokens=index + 2, chunk_size=4, stop_tokens=[])
    # A prompt holding the token fails at step 0, in whichever batch it lands.
    prompts = [*PROMPTS, [9, token, 9]]
    with pytest.raises(decode.NonFiniteError, match="prompt 3: .* NaN at decode step 0 "):
        pj.generate(poisoned, prompts, max_new_tokens=index, batch_size=2, stop_tokens=[])
    # The rows that never meet the token decode as before.
    assert pj.generate(poisoned, PROMPTS[:1], max_new_tokens=steps, stop_tokens=[])[0].tokens \
        == clean[0]
