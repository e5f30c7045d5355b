"""Best-of-N reranking: the Pv-Arm reward of every sampled answer, against full recomputation."""

import numpy as np
import pytest
from helpers import random_adapter

import prosocial_jax as pj
from prosocial_jax.evaluation.best_of_n import best_of_n


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_best_of_n_keeps_the_answer_the_pv_arm_rewards_most(tiny_checkpoints):
    base = pj.load_model(tiny_checkpoints["llama"].path)
    reward = pj.load_model(tiny_checkpoints["qwen2"].path)
    adapter = random_adapter(reward.config)
    prompts = [[5, 17, 33, 8, 9, 60], [7, 3], [11, 12, 13, 14]]  # left-padded together
    alphas = [[0, 1, 0, 0, 0, 0], [1 / 6] * 6, [0.5, 0, 0, 0, 0, 0.5]]
    stops = list(range(20, 60))  # a third of the vocabulary: some answers stop early
    n, kwargs = 3, dict(max_new_tokens=5, temperature=1.0, seed=4, stop_tokens=stops)
    chosen = best_of_n(base, prompts, n, adapter, reward=reward, preferences=alphas,
                       score_batch=2, **kwargs)
    # The candidates: the same sampled rows, in the same order, as one generate call.
    sampled = pj.generate(base, [p for p in prompts for _ in range(n)], **kwargs)
    lengths = {len(g.tokens) for g in sampled}
    assert len(lengths) > 1, lengths  # ragged answers: the mask is exercised
    for i, result in enumerate(chosen):
        expected = []
        for g in sampled[i * n:(i + 1) * n]:
            # The oracle: one full forward of prompt + answer under the adapter, no cache.
            ids = prompts[i] + g.tokens
            log_probs = _log_softmax(reward.logits([ids], adapter=adapter,
                                                   preference=np.asarray(alphas[i]))[0])
            expected.append(sum(log_probs[len(prompts[i]) + t - 1, token]
                                for t, token in enumerate(g.tokens)))
        assert result.candidate_rewards == pytest.approx(expected, abs=1e-4)
        best = int(np.argmax(expected))
        assert result.tokens == sampled[i * n + best].tokens
        assert result.reward == pytest.approx(expected[best], abs=1e-4)
        assert result.preference == pytest.approx(alphas[i])
        assert result.prompt == prompts[i]
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n(base, prompts, 0, adapter, reward=reward, preference="empathy=1")
