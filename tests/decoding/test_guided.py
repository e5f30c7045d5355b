"""Guided decoding: the lexicographic safety rule, against a literal no-cache reference."""

import copy
import dataclasses
import json
import math
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import VOCAB, hf_greedy, with_nan_embedding
from jax.sharding import PartitionSpec as P

import prosocial_jax as pj
from prosocial_jax.decoding import decode, guidance
from prosocial_jax.decoding.guidance import GuidanceError, banned_arrays
from prosocial_jax.evaluation.compare import CompareSettings
from prosocial_jax.evaluation.guidance_sweep import GuidanceSweepSettings
from prosocial_jax.models import adapters
from prosocial_jax.models.tokenizer import encode_prompt

PROMPTS = [[5, 17, 33, 8, 9, 60], [7, 3], [11, 12, 13, 14]]
STEPS = 10


def _random_adapter(model, seed=0, scale=0.5):
    config = adapters.AdapterConfig(r1=3, r2=2, lora_alpha=4.0)
    adapter = adapters.init_adapter(model.config, config, jax.random.key(seed))
    rng = np.random.RandomState(seed)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * scale,
                                                jnp.float32), adapter.params)
    return adapters.Adapter(config, params)


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    base = pj.load_model(tiny_checkpoints["llama"].path)
    reward = pj.load_model(tiny_checkpoints["qwen2"].path)  # another family: sizes may differ
    return base, reward, _random_adapter(reward)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1,
                                                                                         keepdims=True))


def _repeats(answer, n):
    """The tokens that would repeat an n-gram of `answer` (transformers' no_repeat_ngram rule,
    written out on the answer's own tokens)."""
    if n < 2 or len(answer) < n - 1:
        return set()
    seen = {}
    for i in range(len(answer) - n + 1):
        seen.setdefault(tuple(answer[i:i + n - 1]), set()).add(answer[i + n - 1])
    return seen.get(tuple(answer[len(answer) - n + 1:]), set())


def _reference_steps(base, reward, adapter, prompt, alpha, weight, tau, steps, no_repeat=0):
    """Full forwards of both models on the whole sequence every step, the rule applied literally.
    Per step: the token, whether the safety stage overrode the prosocial choice, the safe set's
    size."""
    ids, overridden, safe_sizes = list(prompt), [], []
    safety = adapters.one_hot(adapter.config, adapter.config.safety_attribute)
    for _ in range(steps):
        lp_b = _log_softmax(base.logits([ids])[0, -1])
        lp_r = _log_softmax(reward.logits([ids], adapter=adapter, preference=alpha)[0, -1])
        lp_s = _log_softmax(reward.logits([ids], adapter=adapter, preference=safety)[0, -1])
        score = lp_b + weight * lp_r
        overridden.append(not (lp_s >= lp_s.max() - tau)[np.argmax(score)])
        # The no-repeat rule first narrows the candidates; tau counts from the best of them.
        candidates = np.ones(lp_s.shape, bool)
        candidates[list(_repeats(ids[len(prompt):], no_repeat))] = False
        lp_s = np.where(candidates, lp_s, -np.inf)
        safe = candidates & (lp_s >= lp_s.max() - tau)
        safe_sizes.append(int(safe.sum()))
        ids.append(int(np.argmax(np.where(safe, score, -np.inf))))
    return ids[len(prompt):], overridden, safe_sizes


def _reference(base, reward, adapter, prompt, alpha, weight, tau, steps):
    tokens, overridden, safe_sizes = _reference_steps(base, reward, adapter, prompt, alpha,
                                                      weight, tau, steps)
    return tokens, sum(overridden), float(np.mean(safe_sizes))


def test_zero_guidance_and_no_safety_equals_plain_decoding(models):
    base, reward, adapter = models
    for sampling in ({}, {"temperature": 0.9, "top_p": 0.8, "seed": 3}):
        plain = pj.generate(base, PROMPTS, max_new_tokens=STEPS, stop_tokens=[], **sampling)
        guided = pj.generate(base, PROMPTS, max_new_tokens=STEPS, stop_tokens=[], adapter=adapter,
                             reward=reward, preference="empathy=1", guidance=0.0,
                             safety_margin=math.inf, **sampling)
        assert [g.tokens for g in guided] == [p.tokens for p in plain]
        assert all(g.safety_overrides == 0 for g in guided)


@pytest.mark.parametrize("layer_layout,prefill_chunk", [("auto", None), ("stacked", 4)])
def test_greedy_guided_equals_step_by_step_reference(models, layer_layout, prefill_chunk):
    """The CPU's default layout ("auto": packed for the native kernel where it builds, else
    per layer) and the stacked one, the second with prompts prefilled in chunks of 4 tokens
    (base and Pv-Arm)."""
    base, reward, adapter = models
    alphas = [[0, 1, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.1, 0.2, 0.1], [0, 0, 0, 0, 0.5, 0.5]]
    weights, taus = [1.5, 0.7, 3.0], [0.4, math.inf, 1.0]
    guided = pj.generate(base, PROMPTS, max_new_tokens=STEPS, stop_tokens=[], adapter=adapter,
                         reward=reward, preferences=alphas, guidance=weights,
                         safety_margin=taus, layer_layout=layer_layout,
                         prefill_chunk=prefill_chunk)
    total_overrides = 0
    for row, result in enumerate(guided):
        tokens, overrides, mean_safe = _reference(base, reward, adapter, PROMPTS[row],
                                                  np.asarray(alphas[row]), weights[row],
                                                  taus[row], STEPS)
        assert result.tokens == tokens, row
        assert result.safety_overrides == overrides
        assert result.mean_safe_set == pytest.approx(mean_safe)
        assert result.preference == pytest.approx(alphas[row])
        total_overrides += overrides
    assert guided[1].mean_safe_set == reward.config.vocab_size  # tau = inf: everything is safe
    assert total_overrides > 0  # the finite margins did change some choices


@pytest.mark.parametrize("layer_layout", ["auto", "stacked"])
def test_pv_arm_on_the_base_models_own_weights_runs_one_forward(models, tiny_checkpoints,
                                                               monkeypatch, layer_layout):
    """Without a separate backbone (`reward` left out) base and Pv-Arm rows go through one
    forward a step, the adapter on the Pv-Arm rows only: the tokens, overrides and safe-set
    sizes of the cache-free reference, and the tokens of the two-forward path on a second copy
    of the same weights. The last row repeats the first's prompt (prefilled once, then
    copied into the joint rows)."""
    base = models[0]
    prompts = [*PROMPTS, PROMPTS[0]]
    adapter = _random_adapter(base, seed=3)
    joint_steps = []
    original = decode._joint_step
    monkeypatch.setattr(decode, "_joint_step",
                        lambda *a, **k: joint_steps.append(1) or original(*a, **k))
    alphas = [[0, 1, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.1, 0.2, 0.1], [0, 0, 0, 0, 0.5, 0.5],
              [0.5, 0, 0, 0, 0.5, 0]]
    settings = dict(max_new_tokens=STEPS, stop_tokens=[], adapter=adapter, preferences=alphas,
                    guidance=[1.5, 0.7, 3.0, 2.0], safety_margin=[0.4, math.inf, 1.0, 0.3],
                    layer_layout=layer_layout)
    shared = pj.generate(base, prompts, **settings)
    assert joint_steps  # traced through the one-forward step
    for row, result in enumerate(shared):
        tokens, overrides, mean_safe = _reference(base, base, adapter, prompts[row],
                                                  np.asarray(alphas[row]),
                                                  settings["guidance"][row],
                                                  settings["safety_margin"][row], STEPS)
        assert result.tokens == tokens, row
        assert result.safety_overrides == overrides
        assert result.mean_safe_set == pytest.approx(mean_safe)
    assert sum(r.safety_overrides for r in shared) > 0
    if layer_layout == "stacked":
        return  # the two-forward comparison once, in the CPU's default layout
    copy = pj.load_model(tiny_checkpoints["llama"].path)  # same weights, another model
    apart = pj.generate(base, prompts, reward=copy, **settings)
    assert [r.tokens for r in apart] == [r.tokens for r in shared]
    no_stage = pj.generate(base, prompts, safety_stage=False,
                           **{**settings, "safety_margin": math.inf})
    no_stage_apart = pj.generate(base, prompts, reward=copy, safety_stage=False,
                                 **{**settings, "safety_margin": math.inf})
    assert [r.tokens for r in no_stage] == [r.tokens for r in no_stage_apart]


def _adapter_set(reward, names=("harmlessness", "empathy", "helpfulness")):
    """Single-attribute adapters, each with its own random factors."""
    members = []
    for seed, name in enumerate(names):
        one = _random_adapter(reward, seed=10 + seed)
        config = adapters.single_attribute_config(one.config, name)
        params = jax.tree.map(lambda x: x, one.params)
        for factors in params.values():
            factors["zeta"] = factors["zeta"][:, :1]  # K = 1: one row of the core map
        members.append(adapters.Adapter(config, params))
    return adapters.AdapterSet(tuple(members))


@pytest.mark.parametrize("safety_stage", [True, False])
def test_adapter_set_equals_step_by_step_multi_arm_reference(models, safety_stage):
    """The multi-ARM baseline: sum_k alpha_k log pi_k steers, the safety member filters; rows
    1 and 2 share a prompt (its members' caches prefilled once). Prompts of one length, so that
    the reference compiles one forward per length."""
    base, reward, _ = models
    arms = _adapter_set(reward)
    prompts = [[21, 22, 23, 24], PROMPTS[2], PROMPTS[2]]
    alphas = [[0.2, 0.5, 0.3], [0, 1, 0], [0.5, 0, 0.5]]
    weights, taus = [1.5, 0.7, 3.0], [0.4, 1.0, math.inf]
    steps = 6
    guided = pj.generate(base, prompts, max_new_tokens=steps, stop_tokens=[], adapter=arms,
                         reward=reward, preferences=alphas, guidance=weights,
                         safety_margin=taus, safety_stage=safety_stage)
    one = np.ones(1)
    overrides = 0
    for row, result in enumerate(guided):
        ids = list(prompts[row])
        for _ in range(steps):
            lp_b = _log_softmax(base.logits([ids])[0, -1])
            lp = [_log_softmax(reward.logits([ids], adapter=m, preference=one)[0, -1])
                  for m in arms.adapters]
            score = lp_b + weights[row] * sum(a * x for a, x in zip(alphas[row], lp))
            safe = lp[0] >= lp[0].max() - (taus[row] if safety_stage else math.inf)
            overrides += not safe[np.argmax(score)]
            ids.append(int(np.argmax(np.where(safe, score, -np.inf))))
        assert result.tokens == ids[len(prompts[row]):], row
    assert overrides > 0 if safety_stage else overrides == 0
    assert sum(g.safety_overrides for g in guided) == overrides
    with pytest.raises(adapters.AdapterError, match="member 1 has attributes"):
        adapters.AdapterSet((arms.adapters[0], _random_adapter(reward)))
    with pytest.raises(adapters.AdapterError, match="safety_attribute 'harmlessness'"):
        adapters.AdapterSet(arms.adapters[1:])


@pytest.mark.parametrize("arms", [False, True])
def test_guided_decode_across_phi3_original_length_equals_reference(tiny_checkpoints, models,
                                                                     arms):
    """A Pv-Arm (or an adapter set) on the tiny Phi-3, whose longrope switches to its long
    factors past 64 positions: rows crossing at steps 3 and 2 recompute the Pv-Arm's caches
    there, so every step equals full forwards over the whole sequence (the reference)."""
    base = models[0]
    reward = pj.load_model(tiny_checkpoints["phi3"].path)
    prompts = [np.random.RandomState(n).randint(3, VOCAB, n).tolist() for n in (61, 62)]
    steps = 5
    alphas = [[0.2, 0.5, 0.3], [0, 1, 0]] if arms else [[0, 1, 0, 0, 0, 0],
                                                        [0.1, 0.2, 0.3, 0.1, 0.2, 0.1]]
    adapter = _adapter_set(reward) if arms else _random_adapter(reward)
    guided = pj.generate(base, prompts, max_new_tokens=steps, stop_tokens=[], adapter=adapter,
                         reward=reward, preferences=alphas, guidance=2.0, safety_margin=0.5,
                         prefill_chunk=32)
    one = np.ones(1)
    for row, result in enumerate(guided):
        if not arms:
            tokens, _, _ = _reference_steps(base, reward, adapter, prompts[row],
                                            np.asarray(alphas[row]), 2.0, 0.5, steps)
            assert result.tokens == tokens, row
            continue
        ids = list(prompts[row])
        for _ in range(steps):
            lp_b = _log_softmax(base.logits([ids])[0, -1])
            lp = [_log_softmax(reward.logits([ids], adapter=m, preference=one)[0, -1])
                  for m in adapter.adapters]
            score = lp_b + 2.0 * sum(a * x for a, x in zip(alphas[row], lp))
            safe = lp[0] >= lp[0].max() - 0.5
            ids.append(int(np.argmax(np.where(safe, score, -np.inf))))
        assert result.tokens == ids[len(prompts[row]):], row


def test_safety_stage_off_and_banned_sequences(models):
    base, reward, adapter = models
    common = dict(max_new_tokens=STEPS, stop_tokens=[], adapter=adapter, reward=reward,
                  preference=[1, 1, 1, 1, 1, 1], guidance=1.0)
    off = pj.generate(base, PROMPTS, safety_stage=False, **common)
    no_margin = pj.generate(base, PROMPTS, safety_margin=math.inf, **common)
    assert [r.tokens for r in off] == [r.tokens for r in no_margin]
    assert all(r.preference_normalised for r in off)
    # Ban the pair (t0, t1) the first row produced: it may no longer follow t0.
    t0, t1 = off[0].tokens[:2]
    banned = pj.generate(base, PROMPTS[:1], safety_stage=False, banned_sequences=[[t0, t1]],
                         **common)[0].tokens
    assert banned[0] == t0 and banned[1] != t1
    single = pj.generate(base, PROMPTS[:1], safety_stage=False, banned_sequences=[[t0]],
                         **common)[0].tokens
    assert t0 not in single
    prefix, last = banned_arrays([[4], [1, 2, 3]])
    assert prefix.tolist() == [[-1, -1], [1, 2]] and last.tolist() == [4, 3]


def test_repeated_ngram_ban_against_the_written_out_rule():
    rng = np.random.default_rng(0)
    vocab = 5  # a small vocabulary, so that n-grams do repeat
    generated = rng.integers(0, vocab, size=(3, 12)).astype(np.int32)
    generated[0, :8] = [1, 2, 3, 1, 2, 3, 1, 2]  # a loop
    for n in (2, 3, 4):
        for step in range(13):
            ban = np.asarray(guidance.repeated_ngram_ban(jnp.asarray(generated), step, n, vocab))
            for row in range(3):
                expected = _repeats(generated[row, :step].tolist(), n)
                assert set(np.flatnonzero(ban[row]).tolist()) == expected, (n, step, row)
    assert not guidance.repeated_ngram_ban(jnp.asarray(generated), 12, 0, vocab).any()


def test_no_repeat_ngram_equals_step_by_step_reference(models):
    base, reward, adapter = models
    common = dict(max_new_tokens=STEPS, stop_tokens=[], adapter=adapter, reward=reward,
                  preference=[0, 1, 0, 0, 0, 0], guidance=1.0, safety_margin=1.0)
    plain = pj.generate(base, PROMPTS, **common)
    # Random tiny models loop: without the ban some row repeats a bigram (the test can fail).
    assert any(_repeats(r.tokens[:i], 2) & {r.tokens[i]}
               for r in plain for i in range(1, STEPS))
    guided = pj.generate(base, PROMPTS, no_repeat_ngram=2, **common)
    for row, result in enumerate(guided):
        tokens, _, _ = _reference_steps(base, reward, adapter, PROMPTS[row],
                                        np.asarray([0, 1, 0, 0, 0, 0.0]), 1.0, 1.0, STEPS,
                                        no_repeat=2)
        assert result.tokens == tokens, row
    with pytest.raises(GuidanceError, match="no_repeat_ngram must be 0"):
        pj.generate(base, PROMPTS, no_repeat_ngram=1, **common)
    # The settings of the commands refuse it before any model is loaded.
    for make in (guidance.GuidanceSettings, CompareSettings, GuidanceSweepSettings):
        with pytest.raises(ValueError, match="no_repeat_ngram must be 0 .off. or an n-gram"):
            make(no_repeat_ngram=1)


@pytest.mark.parametrize("safety_stage", [True, False])
def test_rows_sharing_a_prompt_prefill_it_once_and_equal_the_reference(models, monkeypatch,
                                                                     safety_stage):
    """A sweep's rows: two prompts x three preferences, 4 rows per batch (the second batch
    partial). Each batch prefills its distinct prompts only, and every row's tokens, overrides
    and safe-set sizes equal the no-cache reference's for its own preference."""
    base, reward, adapter = models
    alphas = [[0, 1, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.1, 0.2, 0.1], [0, 0, 0, 0, 0.5, 0.5]]
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[2]] * 3
    tau = 0.5 if safety_stage else math.inf
    prefilled = []
    real_prefill = decode.prefill

    def counting_prefill(config, params, tokens, mask, *args, sources=None, **kwargs):
        prefilled.append((np.asarray(mask).sum(1).tolist(),
                          None if sources is None else np.asarray(sources).tolist()))
        return real_prefill(config, params, tokens, mask, *args, sources=sources, **kwargs)

    monkeypatch.setattr(decode, "prefill", counting_prefill)
    steps = STEPS if safety_stage else 4  # without the stage: the simpler path, shorter
    guided = pj.generate(base, prompts, max_new_tokens=steps, stop_tokens=[], adapter=adapter,
                         reward=reward, preferences=alphas * 2, guidance=1.5,
                         safety_margin=0.5, batch_size=4, safety_stage=safety_stage)
    # Prompt lengths prefilled per batch (0: the empty prompt of the padding rows).
    assert prefilled == [([6, 4], [0, 0, 0, 1]), ([4, 0], [0, 0, 1, 1])]
    overrides = 0
    for row, result in enumerate(guided):
        tokens, row_overrides, mean_safe = _reference(base, reward, adapter, prompts[row],
                                                      np.asarray(alphas[row % 3]), 1.5, tau,
                                                      steps)
        assert result.tokens == tokens, row
        assert (result.safety_overrides, result.mean_safe_set) == (
            row_overrides, pytest.approx(mean_safe))
        overrides += row_overrides
    assert overrides > 0 or not safety_stage


def test_changing_preferences_strengths_and_margins_does_not_recompile(models):
    base, reward, adapter = models
    run = lambda **kw: pj.generate(base, PROMPTS, max_new_tokens=8, stop_tokens=[],  # noqa: E731
                                   adapter=adapter, reward=reward, **kw)
    run(preference="empathy=1", guidance=1.0, safety_margin=2.0)
    sizes = decode.decode_chunk._cache_size(), decode.prefill._cache_size()
    run(preference=[0.2] * 6, guidance=[0.0, 2.0, 5.0], safety_margin=[0.1, math.inf, 3.0])
    run(preference="helpfulness=1", guidance=0.5, safety_margin=math.inf, temperature=0.8,
        top_k=5, seed=4)
    run(preferences=[[1, 0, 0, 0, 0, 0], None, "truthfulness=2"], preference="empathy=1",
        plausibility=0.1)
    assert (decode.decode_chunk._cache_size(), decode.prefill._cache_size()) == sizes


def test_sampling_at_t_one_plus_w_with_identical_models_recovers_the_base(models):
    """With a zero adapter the Pv-Arm is the base model, so score = (1 + w) lp_b and sampling
    at T = 1 + w draws from the base distribution at T = 1 (and T = 1 from pi_b^(1+w))."""
    base, _, adapter = models
    zero = adapters.init_adapter(base.config, adapter.config, jax.random.key(0))  # B1 = B2 = 0
    prompt, draws, w = [5, 17, 33], 4096, 1.5
    p_base = np.exp(_log_softmax(base.logits([prompt])[0, -1]))
    tokens = [r.tokens[0] for r in pj.generate(
        base, [prompt] * draws, max_new_tokens=1, stop_tokens=[], adapter=zero,
        preference="empathy=1", guidance=w, safety_margin=math.inf, temperature=1 + w, seed=7,
        batch_size=1024)]
    counts = np.bincount(tokens, minlength=p_base.size)

    def p_value(p):  # chi-square goodness of fit; bins with expected count < 5 are merged
        expected = p * draws
        big = expected >= 5
        observed = np.append(counts[big], counts[~big].sum())
        expected = np.append(expected[big], expected[~big].sum())
        return scipy.stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue

    sharpened = p_base ** (1 + w) / (p_base ** (1 + w)).sum()
    assert p_value(p_base) > 1e-3  # fixed seed: deterministic
    assert p_value(sharpened) < 1e-6  # the test has the power to tell them apart


def test_weak_to_strong_layout_on_one_mesh(tiny_checkpoints, monkeypatch):
    """A small Pv-Arm replicated over "model" (its rows over "data") guides a larger base
    sharded over both, on one 2x4 mesh: the weights and both KV caches lie as asked, and the
    tokens equal one device's."""
    base_path = tiny_checkpoints["llama_mesh"].path
    small_path = tiny_checkpoints["llama_small"].path
    adapter = _random_adapter(pj.load_model(small_path), seed=2)
    kwargs = dict(max_new_tokens=STEPS, stop_tokens=[], adapter=adapter,
                  preferences=[[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]],
                  guidance=[1.0, 2.0, 0.5], safety_margin=[0.5, 2.0, math.inf])
    expected = pj.generate(pj.load_model(base_path), PROMPTS,
                           reward=pj.load_model(small_path), **kwargs)

    base = pj.load_model(base_path, mesh="2x4")
    small = pj.load_model(small_path, mesh=base.mesh, layout="replicated")
    assert small.config.hidden_size < base.config.hidden_size
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(small.params))
    q_proj = base.params["layers"]["attn"]["q_proj"]["weight"]
    assert "model" in q_proj.sharding.spec and not q_proj.sharding.is_fully_replicated
    caches = {}
    real_prefill = decode.prefill

    def prefill(*args, **kwargs):
        state = real_prefill(*args, **kwargs)
        caches.update(base=state.cache.keys.sharding.spec,
                      reward=state.reward_cache.keys.sharding.spec)
        return state

    monkeypatch.setattr(decode, "prefill", prefill)
    got = pj.generate(base, PROMPTS, reward=small, **kwargs)
    assert [r.tokens for r in got] == [r.tokens for r in expected]
    assert [r.safety_overrides for r in got] == [r.safety_overrides for r in expected]
    assert caches == {"base": P(None, "data", "model"),  # [layers, rows, heads, ...]
                      "reward": P(None, "data")}
    with pytest.raises(ValueError, match="layout 'diagonal'"):
        pj.load_model(small_path, mesh=base.mesh, layout="diagonal")


def test_generate_command_reward_layout(tiny_chat, tmp_path, capsys):
    """--reward-layout replicated loads the Pv-Arm backbone a second time, whole on every
    device of the --mesh (here the base itself: a layout differs, so it is not reused), and
    decodes the tokens of the default layout."""
    from prosocial_jax import cli

    adapter_dir = pj.save_adapter(_random_adapter(pj.load_model(tiny_chat.path)),
                                  tmp_path / "adapter")
    tokens = {}
    for layout in ("sharded", "replicated"):
        out = tmp_path / f"{layout}.jsonl"
        assert cli.main(["generate", "--model", str(tiny_chat.path), "--prompt", "Be kind.",
                         "--mesh", "2x4", "--adapter", str(adapter_dir), "--preference",
                         "empathy=1", "--reward-layout",
                         layout, "--max-new-tokens", "6", "--quiet", "--out", str(out)]) == 0
        tokens[layout] = json.loads(out.read_text())["tokens"]
    assert tokens["replicated"] == tokens["sharded"]
    assert cli.main(["generate", "--model", str(tiny_chat.path), "--prompt", "Be kind.",
                     "--adapter", str(adapter_dir), "--reward-layout", "diagonal"]) == 2
    assert "reward_layout must be sharded or replicated, got 'diagonal'" in \
        capsys.readouterr().err


def test_bad_preferences_and_mismatched_models(models, tiny_checkpoints, tiny_chat):
    base, reward, adapter = models
    run = lambda **kw: pj.generate(base, PROMPTS, max_new_tokens=2, adapter=adapter,  # noqa: E731
                                   reward=reward, **kw)
    with pytest.raises(GuidanceError, match="row 1: .*needs 6 entries"):
        run(preferences=[[1, 0, 0, 0, 0, 0], [1, 0], None], preference="empathy=1")
    with pytest.raises(GuidanceError, match="row 0: .*>= 0"):
        run(preference=[-1, 1, 1, 0, 0, 0])
    with pytest.raises(GuidanceError, match="row 2: .*all zeros"):
        run(preferences=[None, None, [0] * 6], preference="empathy=1")
    with pytest.raises(GuidanceError, match="row 0: no preference"):
        run()
    with pytest.raises(GuidanceError, match="not attributes of this adapter"):
        run(preference="kindness=1")
    with pytest.raises(GuidanceError, match="safety_margin must be >= 0"):
        run(preference="empathy=1", safety_margin=-1.0)
    with pytest.raises(GuidanceError, match="needs a Pv-Arm adapter"):
        pj.generate(base, PROMPTS, preference="empathy=1")
    chat = pj.load_model(tiny_chat.path)  # SmolLM2's tokenizer, 49,152 tokens
    other = copy.deepcopy(chat.tokenizer)
    other.add_tokens(["<not-in-the-base-vocabulary>"])
    chat_adapter = _random_adapter(chat)
    with pytest.raises(GuidanceError, match="different tokenizers"):
        pj.generate(chat, ["hi"], adapter=chat_adapter, preference=[1] * 6,
                    reward=dataclasses.replace(chat, tokenizer=other))
    with pytest.raises(GuidanceError, match="vocabulary sizes differ"):
        pj.generate(base, PROMPTS, adapter=chat_adapter, reward=chat, preference=[1] * 6)


def test_padded_embedding_rows_are_not_tokens(tiny_chat):
    """A Pv-Arm backbone whose embedding has rows past the tokenizer (as Qwen2.5's do) pairs with
    a base without them; the padding rows are never emitted."""
    chat = pj.load_model(tiny_chat.path)
    extra = 64
    table = chat.params["embed"]["embedding"]  # tied: also the output head
    params = {**chat.params, "embed": {"embedding": jnp.concatenate(
        [table, 30.0 * jnp.ones((extra, table.shape[1]), table.dtype)], axis=0)}}
    padded = dataclasses.replace(chat, params=params, config=dataclasses.replace(
        chat.config, vocab_size=chat.config.vocab_size + extra))
    adapter = _random_adapter(padded)
    out = pj.generate(chat, ["Say hi."], max_new_tokens=6, adapter=adapter, reward=padded,
                      preference="empathy=1", guidance=2.0, safety_margin=1.0)
    assert all(t < len(chat.tokenizer) for t in out[0].tokens)


def test_generate_command_with_adapter_and_per_row_settings(tiny_chat, tmp_path, capsys):
    from prosocial_jax import cli

    chat = pj.load_model(tiny_chat.path)
    adapter_dir = pj.save_adapter(_random_adapter(chat), tmp_path / "adapter")
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Say hi.", "kind": "benign"},
            {"prompt": "Be kind.", "preference": {"empathy": 2, "helpfulness": 2},
             "guidance": 2.5, "safety_margin": 1.0},
            {"prompt": "Too short.", "preference": [1, 0]},
            {"prompt": "Negative.", "preference": "empathy=-1"},
            {"prompt": "Zero.", "guidance": -2},
            {"prompt": "Infinite.", "guidance": math.inf}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    code = cli.main(["generate", "--model", str(tiny_chat.path), "--prompts", str(prompts),
                     "--out", str(out), "--max-new-tokens", "4", "--adapter", str(adapter_dir),
                     "--preference", "0,0.4,0.2,0.1,0.2,0.1", "--guidance", "1.5", "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"{prompts}:3: skipped: a preference needs 6 entries" in err
    assert f"{prompts}:4: skipped: preference entries must be finite and >= 0" in err
    assert f"{prompts}:5: skipped: guidance must be >= 0" in err
    assert f"{prompts}:6: skipped: guidance must be finite, got inf" in err
    assert f"{prompts}:2: note: preference normalised to sum 1" in err
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in written] == [1, 2]
    first, second = written
    assert first["guidance"] == 1.5 and first["safety_margin"] == 2.0
    assert first["preference"]["empathy"] == pytest.approx(0.4)
    assert not first["preference_normalised"] and first["kind"] == "benign"
    assert second["preference"]["empathy"] == second["preference"]["helpfulness"] == 0.5
    assert second["guidance"] == 2.5 and second["safety_margin"] == 1.0
    assert second["preference_normalised"]
    # Tokens, overrides and safe-set sizes against the literal rule, row by row.
    adapter = pj.load_adapter(adapter_dir, chat.config)
    stops = set(decode.stop_token_ids(chat))
    for row, alpha in ((first, [0, 0.4, 0.2, 0.1, 0.2, 0.1]), (second, [0, 0.5, 0, 0, 0, 0.5])):
        ids = encode_prompt(chat.tokenizer, row["prompt"])
        assert row["prompt_tokens"] == len(ids)
        tokens, overridden, sizes = _reference_steps(chat, chat, adapter, ids, np.asarray(alpha),
                                                     row["guidance"], row["safety_margin"], 4)
        n = next((i + 1 for i, t in enumerate(tokens) if t in stops), 4)
        assert row["tokens"] == tokens[:n]
        assert row["safety_overrides"] == sum(overridden[:n])
        assert row["mean_safe_set"] == pytest.approx(np.mean(sizes[:n]))
    assert cli.main(["generate", "--model", str(tiny_chat.path), "--prompts", str(prompts),
                     "--adapter", str(adapter_dir), "--preference", "empathy=1",
                     "--strict", "--quiet"]) == 2


@pytest.mark.parametrize("settings, message", [
    (dict(guidance=math.inf), "row 0: guidance must be finite, got inf"),
    (dict(guidance=[1.0, 2.0, -math.inf]), "row 2: guidance must be finite, got -inf"),
    (dict(guidance=[1.0, math.nan, 1.0]), "row 1: guidance must be a number, got nan"),
    (dict(guidance=1e39), "row 0: guidance = 1e+39 does not fit in float32"),
    (dict(guidance=[0.5, -1.0, 1.0]), "row 1: guidance must be >= 0.0, got -1.0"),
    (dict(safety_margin=math.nan), "row 0: safety_margin must be a number, got nan"),
    (dict(safety_margin=[1.0, -1.0, math.inf]), "row 1: safety_margin must be >= 0.0, got -1.0"),
    (dict(safety_margin=-math.inf), "row 0: safety_margin must be >= 0.0, got -inf"),
    (dict(plausibility=1.5), "row 0: plausibility must be <= 1.0, got 1.5"),
    (dict(plausibility=[0.1, 0.1, -0.1]), "row 2: plausibility must be >= 0.0, got -0.1"),
    (dict(plausibility=math.nan), "row 0: plausibility must be a number, got nan"),
    (dict(plausibility=math.inf), "row 0: plausibility must be finite, got inf"),
])
def test_bad_guidance_values_are_refused_at_entry(models, settings, message):
    base, reward, adapter = models
    with pytest.raises(GuidanceError, match=re.escape(message)):
        pj.generate(base, PROMPTS, max_new_tokens=2, adapter=adapter, reward=reward,
                    preference="empathy=1", **settings)


def test_plausibility_one_keeps_only_the_base_models_favourite(models, tiny_checkpoints):
    """p = 1 allows only the base's top token; with no safety stage that is plain greedy
    decoding of the base, however strongly the Pv-Arm pulls (transformers as the oracle)."""
    base, reward, adapter = models
    out = pj.generate(base, PROMPTS, max_new_tokens=STEPS, stop_tokens=[], adapter=adapter,
                      reward=reward, preference="empathy=1", guidance=5.0,
                      safety_margin=math.inf, plausibility=1.0)
    torch_base = tiny_checkpoints["llama"].torch_model
    assert [r.tokens for r in out] == [hf_greedy(torch_base, p, STEPS, eos_token_id=VOCAB + 1)
                                       for p in PROMPTS]


def _with_factor(adapter, factor, fn):
    params = {target: {**factors, factor: fn(factors[factor])}
              for target, factors in adapter.params.items()}
    return adapters.Adapter(adapter.config, params)


def test_non_finite_pv_arm_fails_naming_prompt_step_and_model(models):
    base, reward, adapter = models
    run = lambda a, **kw: pj.generate(base, PROMPTS, max_new_tokens=STEPS,  # noqa: E731
                                      stop_tokens=[], adapter=a, reward=reward,
                                      preference="empathy=1", **kw)
    nan = _with_factor(adapter, "B1", lambda x: x.at[0, 0, 0].set(jnp.nan))
    with pytest.raises(decode.NonFiniteError, match=re.escape(
            "prompt 0: the Pv-Arm's logits under the row's preference (prosocial stage) contain "
            "NaN at decode step 0 ")):
        run(nan)
    # A huge (finite) zeta row for the safety attribute: the safety one-hot overflows, while
    # the user's alpha gives it weight 0, so only the safety stage breaks.
    safety = adapter.config.safety_index
    loud = _with_factor(adapter, "zeta", lambda x: x.at[:, safety].set(1e30))
    with pytest.raises(decode.NonFiniteError,
                       match=re.escape("prompt 0: the Pv-Arm's logits under the safety one-hot "
                                       "(safety stage)")) as info:
        run(loud)
    assert info.value.step == 0
    assert [r.tokens for r in run(loud, safety_stage=False)] == [
        r.tokens for r in run(adapter, safety_stage=False)]


def test_non_finite_pv_arm_backbone_at_a_later_step(models):
    """A NaN embedding row in the Pv-Arm backbone: the step after a row emits that token, the
    Pv-Arm's logits for that row are NaN. Expected row and step from the literal reference."""
    base, reward, adapter = models
    alpha, weight, tau = np.asarray([0, 1, 0, 0, 0, 0.0]), 1.0, 2.0
    clean = [_reference(base, reward, adapter, p, alpha, weight, tau, STEPS)[0] for p in PROMPTS]
    index, token = next((i, t) for i, t in enumerate(clean[2][:STEPS - 1]) if i >= 1
                        and t not in PROMPTS[0] + clean[0] + PROMPTS[1] + clean[1]
                        + PROMPTS[2] + clean[2][:i] and t != base.pad_id)
    with pytest.raises(decode.NonFiniteError, match=re.escape(
            f"prompt 2: the Pv-Arm's logits under the row's preference (prosocial stage) contain "
            f"NaN at decode step {index + 1} ")):
        pj.generate(base, PROMPTS, max_new_tokens=STEPS, stop_tokens=[], adapter=adapter,
                    reward=with_nan_embedding(reward, token), preference=alpha, guidance=weight,
                    safety_margin=tau, chunk_size=4)


def test_fault_record_on_hand_made_scores():
    """Which distribution is blamed, by hand: row 0's guided score is -inf on its whole safe
    set, row 1's base logits hold a NaN (blamed before the Pv-Arm's), row 2 is fine, row 3 is
    broken but already done, row 4 failed at an earlier step (kept)."""
    inf = np.inf
    base = np.array([[0, 0, 0, 0], [0, np.nan, 0, 0], [0, 1, 2, 3], [np.nan] * 4, [0, 0, 0, 0]])
    prosocial = np.array([[-inf, 0, 0, 0], [0, 0, np.nan, 0], [0, 0, 0, 0], [0, 0, 0, 0],
                          [0, 0, 0, 0]])
    safety = np.array([[5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    settings = guidance.Guidance(jnp.ones((5, 6)) / 6, jnp.ones(5), jnp.ones(5),
                                 jnp.full(5, -jnp.inf))
    reward = jnp.asarray(np.stack([prosocial, safety], axis=1).reshape(10, 4), jnp.float32)
    scores, _, _ = guidance.guided_scores(jnp.asarray(base, jnp.float32), reward, settings,
                                          None, 4)
    state = types.SimpleNamespace(
        step=jnp.int32(3), done=jnp.asarray([False, False, False, True, False]),
        fault_step=jnp.asarray([-1, -1, -1, -1, 1]), fault_source=jnp.asarray([0, 0, 0, 0, 2]),
        fault_value=jnp.asarray([0, 0, 0, 0, np.nan], jnp.float32))
    faults = decode._record_faults(state, [
        (0, decode._row_max(jnp.asarray(base, jnp.float32))),
        (1, decode._row_max(jnp.asarray(prosocial, jnp.float32))),
        (2, decode._row_max(jnp.asarray(safety, jnp.float32))), (3, decode._row_max(scores))])
    assert np.asarray(faults["fault_step"]).tolist() == [3, 3, -1, -1, 1]
    assert np.asarray(faults["fault_source"]).tolist()[:2] == [3, 0]
    assert np.asarray(faults["fault_source"])[4] == 2
    value = np.asarray(faults["fault_value"])
    assert value[0] == -np.inf and np.isnan(value[1]) and np.isnan(value[4])
