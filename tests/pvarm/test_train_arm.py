"""Pv-Arm training on a tiny model: learns above chance, evaluates on a grid (resume: see
test_training_runs.py)."""

import dataclasses

import jax
import numpy as np
import pytest
from helpers import VOCAB

import prosocial_jax as pj
from prosocial_jax.data import rows as data
from prosocial_jax.models import adapters as pblora
from prosocial_jax.pvarm.train import ArmSettings, simplex_grid, train_arm

ATTRIBUTES = ("harmlessness", "empathy")
MARKERS = (7, 9)  # attribute i prefers the response that contains token MARKERS[i] more often


def _sequence(prompt, response):
    ids = prompt + response + [2]
    return data.SFTExample(ids, [False] * len(prompt) + [True] * (len(response) + 1), 0)


def _pairs(seed, n):
    """Synthetic pairs with a learnable rule per attribute (and some unlabelled entries)."""
    rng = np.random.RandomState(seed)
    examples = []
    for i in range(n):
        prompt = list(rng.randint(20, VOCAB, 4))
        responses = []
        for _ in range(2):
            body = list(rng.randint(20, VOCAB, 6))
            for marker in MARKERS:
                for position in rng.choice(6, rng.randint(0, 4), replace=False):
                    body[position] = marker
            responses.append(body)
        labels = []
        for marker in MARKERS:
            counts = [r.count(marker) for r in responses]
            labels.append(0 if counts[0] == counts[1] else 1 if counts[0] > counts[1] else -1)
        examples.append(data.PairExample(_sequence(prompt, responses[0]),
                                         _sequence(prompt, responses[1]), labels, i))
    return [e for e in examples if any(e.labels)]


@pytest.fixture
def model(tiny_checkpoints):
    return pj.load_model(tiny_checkpoints["llama"].path)


ADAPTER = pblora.AdapterConfig(r1=4, r2=4, lora_alpha=8.0, attributes=ATTRIBUTES,
                               target_modules=("q_proj", "v_proj", "down_proj"), dropout=0.0)


def test_training_beats_chance_on_held_out_pairs(model, tmp_path):
    train, dev = _pairs(0, 96), _pairs(1, 48)
    settings = ArmSettings(steps=60, batch_size=8, max_len=32, learning_rate=2e-2,
                           warmup_steps=5, beta=1.0, checkpoint_every=60)
    before = pj.train.evaluate_adapter(
        model, pblora.init(model.config, ADAPTER, jax.random.key(0)), dev,
        simplex_grid(2), max_len=32)
    adapter, history, evaluation = train_arm(model, ADAPTER, train, dev, settings,
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


def test_data_parallel_mesh_equals_single_device(tiny_checkpoints, tmp_path):
    train = _pairs(3, 32)
    settings = ArmSettings(steps=2, batch_size=8, max_len=32, learning_rate=1e-2,
                           warmup_steps=1, beta=1.0, checkpoint_every=2)
    single = pj.load_model(tiny_checkpoints["llama_mesh"].path)
    mesh = pj.load_model(tiny_checkpoints["llama_mesh"].path, mesh="2x4")
    config = dataclasses.replace(ADAPTER, dropout=0.0)
    one, one_history, _ = train_arm(single, config, train, [], settings, tmp_path / "one",
                                    progress=False)
    many, many_history, _ = train_arm(mesh, config, train, [], settings, tmp_path / "many",
                                      progress=False)
    for a, b in zip(one_history, many_history):
        np.testing.assert_allclose(list(b["loss"].values()), list(a["loss"].values()),
                                   rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
