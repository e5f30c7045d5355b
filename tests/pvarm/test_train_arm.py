"""Pv-Arm training on a tiny model: learns above chance, evaluates on a grid (resume: see
test_training_runs.py)."""


import jax
import numpy as np
import pytest
from helpers import ARM_ADAPTER, synthetic_pairs

import prosocial_jax as pj
from prosocial_jax.evaluation.preference_accuracy import evaluate_adapter, simplex_grid
from prosocial_jax.models.adapters import init_adapter
from prosocial_jax.pvarm.train import ArmSettings, train_arm


@pytest.fixture
def model(tiny_checkpoints):
    return pj.load_model(tiny_checkpoints["llama"].path)




def test_training_beats_chance_on_held_out_pairs(model, tmp_path):
    train, dev = synthetic_pairs(0, 96), synthetic_pairs(1, 48)
    settings = ArmSettings(steps=60, batch_size=8, max_len=32, learning_rate=2e-2,
                           warmup_steps=5, beta=1.0, checkpoint_every=60)
    before = evaluate_adapter(
        model, init_adapter(model.config, ARM_ADAPTER, jax.random.key(0)), dev,
        simplex_grid(2), max_len=32)
    adapter, history, evaluation = train_arm(model, ARM_ADAPTER, train, dev, settings,
                                             tmp_path / "arm", progress=False)
    assert evaluation["grid_names"] == ["harmlessness", "empathy", "uniform"]
    accuracy = np.array(evaluation["accuracy"])
    for i in range(2):  # each attribute, under its own one-hot preference
        assert accuracy[i, i] > 0.75, evaluation
        assert accuracy[i, i] > np.array(before["accuracy"])[i, i] + 0.15
    assert {"loss", "accuracy", "conflicts", "cosines", "alpha"} <= set(history[0])
    assert len(history[0]["cosines"]) == 1  # one attribute pair
    saved = pj.save_adapter(adapter, tmp_path / "adapter")
    again = pj.load_adapter(saved, model.config)
    assert again.config.base_model == model.source
    ids = np.array([train[0].a.input_ids])
    np.testing.assert_array_equal(
        np.asarray(model.logits(ids, adapter=again, preference=[1, 0])),
        np.asarray(model.logits(ids, adapter=adapter, preference=[1, 0])))


def test_simplex_grid():
    grid = simplex_grid(3, 2)
    assert grid.shape == (7, 3)  # 6 points of step 1/2, plus the uniform vector
    np.testing.assert_allclose(grid.sum(1), 1.0)
    assert simplex_grid(6).shape == (7, 6)


def test_held_out_sample_is_seeded_ordered_and_bounded():
    from prosocial_jax.pvarm.train import sample_held_out

    items = list(range(10))
    picked = sample_held_out(items, 4, seed=3)
    assert len(picked) == 4 and picked == sorted(picked) and set(picked) <= set(items)
    assert picked == sample_held_out(items, 4, seed=3)  # same seed, same sample
    assert sample_held_out(items, 0) == items and sample_held_out(items, 12) == items


def test_winner_anchor_weights_per_attribute():
    settings = ArmSettings(winner_nll=0.5)
    np.testing.assert_array_equal(settings.winner_nll_vector(3), [0.5, 0.5, 0.5])
    one = ArmSettings(winner_nll=0.5, winner_nlls=(1.0, 0.0, 0.0))  # the per-attribute form wins
    np.testing.assert_array_equal(one.winner_nll_vector(3), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="winner_nlls has 3 entries for 6 attributes"):
        one.winner_nll_vector(6)
    with pytest.raises(ValueError, match="winner_nlls"):
        ArmSettings(winner_nlls=(1.0, -0.5))


def test_extending_an_adapter_trains_the_new_attribute_alone(model, tmp_path):
    """An adapter trained for harmlessness alone gains empathy from pairs labelled for empathy
    only: the new attribute learns (0.47 -> 0.72 held-out accuracy; training every factor on
    the same pairs reaches 0.97: one zeta row holds far less than an adapter), and every other
    factor, so the old attribute's behaviour under weight 0 for the new one, stays exactly as
    it was."""
    import dataclasses

    from prosocial_jax.data.preferences import PairExample

    def keep(examples, labels):  # the same pairs, labelled for some attributes only
        out = [PairExample(e.a, e.b, labels(e.labels), e.line) for e in examples]
        return [e for e in out if any(e.labels)]

    train, dev = synthetic_pairs(0, 96), synthetic_pairs(1, 48)
    settings = ArmSettings(steps=60, batch_size=8, max_len=32, learning_rate=2e-2,
                           warmup_steps=5, beta=1.0, checkpoint_every=60)
    single = dataclasses.replace(ARM_ADAPTER, attributes=ARM_ADAPTER.attributes[:1])
    old, _, _ = train_arm(model, single, keep(train, lambda labels: labels[:1]), [], settings,
                          tmp_path / "old", progress=False)
    # The new row is all there is to train: a higher rate, for longer.
    settings = dataclasses.replace(settings, steps=120, learning_rate=0.2, checkpoint_every=120)
    empathy_only = keep(dev, lambda labels: [0, labels[1]])
    before = evaluate_adapter(model, pj.models.extend_adapter(old, "empathy", jax.random.key(0)),
                              empathy_only, simplex_grid(2), max_len=32)
    extended, _, evaluation = train_arm(
        model, dataclasses.replace(ARM_ADAPTER, base_model=old.config.base_model),
        keep(train, lambda labels: [0, labels[1]]), empathy_only, settings, tmp_path / "new",
        progress=False, extend=old)
    accuracy = np.array(evaluation["accuracy"])[1, 1]  # empathy under its one-hot
    assert accuracy > np.array(before["accuracy"])[1, 1] + 0.15, evaluation
    for target, factors in extended.params.items():
        for name, value in factors.items():
            kept = value[:, :1] if name == "zeta" else value
            np.testing.assert_array_equal(np.asarray(kept), np.asarray(old.params[target][name]))
    ids = np.array([train[0].a.input_ids])
    np.testing.assert_allclose(np.asarray(model.logits(ids, adapter=extended, preference=[1, 0])),
                               np.asarray(model.logits(ids, adapter=old, preference=[1])),
                               atol=1e-6)
    with pytest.raises(pj.models.AdapterError, match="plus one new one"):
        train_arm(model, dataclasses.replace(ARM_ADAPTER, attributes=("harmlessness", "empathy",
                                                                      "other")),
                  train, [], settings, tmp_path / "bad", progress=False, extend=old)
    with pytest.raises(pj.models.AdapterError, match="r2 must stay"):
        train_arm(model, dataclasses.replace(ARM_ADAPTER, r2=2), train, [], settings,
                  tmp_path / "bad", progress=False, extend=old)
