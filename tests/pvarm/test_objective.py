"""The ARM objective: what the reward (the response log-likelihood) masks, the Bradley-Terry
loss, and the K-gradient trick."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import VOCAB

import prosocial_jax as pj
from prosocial_jax.data.preferences import PairExample, pair_batch
from prosocial_jax.data.sft import SFTExample, sft_batch
from prosocial_jax.evaluation import likelihood
from prosocial_jax.models.adapters import AdapterConfig, init_adapter
from prosocial_jax.pvarm import objective

BETAS = jnp.array([0.5, 1.0, 2.0])


@pytest.fixture
def setup(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    config = AdapterConfig(r1=2, r2=2, attributes=("harmlessness", "empathy", "truthful"))
    adapter = init_adapter(model.config, config, jax.random.key(0))
    rng = np.random.RandomState(0)
    adapter.params = jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.3, jnp.float32), adapter.params)
    return model, adapter


def _example(prompt, response, eos=2):
    ids = prompt + response + [eos]
    return SFTExample(ids, [False] * len(prompt) + [True] * (len(response) + 1), 0)


def _batch(rng, n=4):
    examples = []
    for i in range(n):
        prompt = list(rng.randint(3, VOCAB, rng.randint(2, 6)))
        a, b = (list(rng.randint(3, VOCAB, rng.randint(1, 6))) for _ in range(2))
        labels = [int(x) for x in rng.choice([-1, 0, 1], 3)]
        labels[i % 3] = 1  # every attribute has a labelled pair
        examples.append(PairExample(_example(prompt, a), _example(prompt, b), labels, i))
    return pair_batch(examples, pad_id=0, max_len=64)


def test_reward_sums_response_log_probs_including_eos(setup):
    model, _ = setup
    example = _example([5, 6, 7], [8, 9, 10])
    batch = sft_batch([example], 0, 64)
    got = float(likelihood.sequence_log_likelihood(
        model.config, model.params, batch["tokens"], batch["attention_mask"],
        batch["loss_mask"])[0])
    logits = np.asarray(model.logits([example.input_ids]))[0].astype(np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)),
                                       -1, keepdims=True)) - logits.max(-1, keepdims=True)
    ids = example.input_ids
    expected = sum(log_probs[t - 1, ids[t]] for t in range(3, len(ids)))  # 8, 9, 10 and EOS
    assert got == pytest.approx(expected, rel=1e-5)

    def score(tokens):
        return float(likelihood.sequence_log_likelihood(
            model.config, model.params, tokens, batch["attention_mask"], batch["loss_mask"])[0])
    padded = batch["tokens"].copy()
    padded[0, len(ids):] = 77  # padding after the sequence: masked everywhere
    assert score(padded) == got
    other_eos = batch["tokens"].copy()
    other_eos[0, len(ids) - 1] = 3
    assert score(other_eos) != pytest.approx(got)


def test_bradley_terry_losses_and_masks():
    margins = jnp.array([2.0, -1.0, 0.5])
    labels = jnp.array([[1, -1, 0], [1, -1, 0], [0, 1, 0]], jnp.int8)
    out = objective.attribute_losses(margins, labels, BETAS)
    expected_0 = np.mean([np.logaddexp(0, -0.5 * 2.0), np.logaddexp(0, -0.5 * -1.0)])
    assert float(out["loss"][0]) == pytest.approx(expected_0, rel=1e-6)
    assert out["accuracy"].tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert out["labelled"].tolist() == [2, 3, 0]
    # dL_i/dm_p, by autodiff of the summed attribute losses.
    jacobian = jax.jacobian(
        lambda m: objective.attribute_losses(m, labels, BETAS)["loss"])(margins)
    np.testing.assert_allclose(np.asarray(objective.loss_coefficients(margins, labels, BETAS)),
                               np.asarray(jacobian), atol=1e-7)


# Per-attribute weights with a zero cover the uniform case too.
@pytest.mark.parametrize("nll_weights", [None, (0.7, 0.0, 0.3)])
def test_per_attribute_gradients_equal_separate_backward_passes(setup, nll_weights):
    model, adapter = setup
    batch = _batch(np.random.RandomState(1))
    labels = jnp.asarray(batch.pop("labels"))
    alpha = jnp.array([0.2, 0.5, 0.3])
    stacked, terms = objective.per_attribute_gradients(
        model.config, model.params, adapter.config, adapter.params, batch, labels, BETAS, alpha,
        nll_weights=None if nll_weights is None else jnp.asarray(nll_weights))
    pairs, _, length = batch["tokens"].shape
    # Scored response tokens per response (the first marked token has no logit before it).
    counts = np.asarray(batch["response"])[..., 1:].sum(-1).astype(np.float32)  # [P, 2]

    def direct_losses(params):
        """Every attribute's loss written out: Bradley-Terry on the margins, plus the weighted
        mean per-token NLL of each labelled pair's winner."""
        flat = {k: batch[k].reshape(2 * pairs, length) for k in ("tokens", "attention",
                                                               "response")}
        r = likelihood.sequence_log_likelihood(
            model.config, model.params, flat["tokens"], flat["attention"], flat["response"],
            adapter.config, params, jnp.broadcast_to(alpha, (2 * pairs, 3))).reshape(pairs, 2)
        losses = []
        for i in range(3):
            total_bt, total_nll, n = 0.0, 0.0, 0
            for p in range(pairs):
                s = int(labels[p, i])
                if s == 0:
                    continue
                m = r[p, 0] - r[p, 1]
                total_bt += jnp.log1p(jnp.exp(-BETAS[i] * s * m))
                w = 0 if s > 0 else 1
                total_nll += -r[p, w] / counts[p, w]
                n += 1
            weight = 0.0 if nll_weights is None else nll_weights[i]
            losses.append((total_bt + weight * total_nll) / n)
        return losses

    for i in range(3):
        direct = jax.grad(lambda params, i=i: direct_losses(params)[i])(adapter.params)
        for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(stacked)):
            np.testing.assert_allclose(np.asarray(b[i]), np.asarray(a), atol=2e-5, rtol=1e-3)
    direct_margins = likelihood.pair_margins(model.config, model.params, batch,
                                             adapter.config, adapter.params, alpha)
    np.testing.assert_allclose(np.asarray(terms["margins"]), np.asarray(direct_margins),
                               atol=1e-4)
