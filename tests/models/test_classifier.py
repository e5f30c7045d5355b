"""Score models (sequence classifiers, Beaver reward / cost heads) against outside references:
transformers' AutoModelForSequenceClassification, and an explicit numpy head on transformers'
trunk hidden states."""

import json

import numpy as np
import pytest
from helpers import FAMILIES, VOCAB, randomize, tiny_hf_config
from safetensors.numpy import save_file

from prosocial_jax.models.classifier import load_score_model
from prosocial_jax.models.hf import CheckpointError

PAD = 0  # tiny configs' pad_token_id


def ragged_batch(seed=0):
    """Right-padded rows of different lengths; row 2 ends in the pad id inside its mask (read
    one token earlier, as transformers does)."""
    rng = np.random.default_rng(seed)
    lengths = [9, 5, 7, 1]
    tokens = np.full((len(lengths), 12), PAD, np.int64)
    mask = np.zeros(tokens.shape, np.int64)
    for row, length in enumerate(lengths):
        tokens[row, :length] = rng.integers(3, VOCAB, length)
        mask[row, :length] = 1
    tokens[2, 6] = PAD
    return tokens, mask


def build_classifier(family, folder, labels=("helpfulness", "empathy")):
    import torch
    import transformers

    torch.manual_seed(1)
    config = tiny_hf_config(family)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    randomize(model, norm_offset=0.0 if family.startswith("gemma") else 1.0)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_scores_equal_transformers(family, tmp_path):
    import torch

    reference = build_classifier(family, tmp_path)
    tokens, mask = ragged_batch()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(tokens),
                             attention_mask=torch.tensor(mask)).logits.numpy()
    model = load_score_model(tmp_path)
    assert model.head.labels == ("helpfulness", "empathy")
    np.testing.assert_allclose(model.scores(tokens, mask), expected, atol=1e-4, rtol=1e-4)
    # Each row alone (no padding at all) scores the same as inside the ragged batch.
    for row in (0, 3):
        length = int(mask[row].sum())
        alone = model.scores(tokens[row:row + 1, :length], mask[row:row + 1, :length])
        np.testing.assert_allclose(alone[0], expected[row], atol=1e-4, rtol=1e-4)


def test_classifier_sharded_equals_one_device(tmp_path):
    build_classifier("llama", tmp_path)
    tokens, mask = ragged_batch(seed=3)
    single = load_score_model(tmp_path).scores(tokens, mask)
    sharded = load_score_model(tmp_path, mesh="4x2")
    assert len(sharded.trunk.mesh.devices.flat) == 8
    np.testing.assert_allclose(sharded.scores(tokens, mask), single, atol=1e-5, rtol=1e-5)


def write_beaver(folder, score_type="cost", normalize=True, bias=True):
    """A Beaver-style LlamaForScore folder: transformers' LlamaModel trunk under "model.", a
    score head, and safe-rlhf's normalizer buffers (the count is int64, as upstream)."""
    import torch
    import transformers

    torch.manual_seed(2)
    config = tiny_hf_config("llama")
    trunk = transformers.LlamaModel(config).eval()
    randomize(trunk, norm_offset=1.0)
    rng = np.random.default_rng(5)
    head_w = rng.normal(0, 0.3, (1, config.hidden_size)).astype(np.float32)
    head_b = np.array([0.25], np.float32)
    mean, var = np.array([0.5], np.float32), np.array([4.0], np.float32)
    tensors = {f"model.{k}": v.numpy().copy() for k, v in trunk.state_dict().items()}
    tensors["score_head.weight"] = head_w
    if bias:
        tensors["score_head.bias"] = head_b
    tensors.update({"normalizer.mean": mean, "normalizer.var": var,
                    "normalizer.count": np.array([1000], np.int64)})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    raw = config.to_dict()
    raw.update(architectures=["LlamaForScore"], score_dim=1, bias=bias, score_type=score_type,
               do_normalize=normalize, normalizer_type="ExponentialMovingAverage",
               momentum=0.9)
    (folder / "config.json").write_text(json.dumps(raw))
    return trunk, head_w, (head_b if bias else np.zeros(1, np.float32)), mean, var


@pytest.mark.parametrize("score_type,normalize", [("cost", True), ("reward", True),
                                                  ("cost", False)])
def test_beaver_score_head_equals_numpy(tmp_path, score_type, normalize):
    import torch

    trunk, head_w, head_b, mean, var = write_beaver(tmp_path, score_type, normalize)
    tokens, mask = ragged_batch(seed=1)
    with torch.no_grad():
        hidden = trunk(input_ids=torch.tensor(tokens),
                       attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    # safe-rlhf: the last attended token (a pad id inside the mask is still read), then
    # affine normalisation for rewards, scale for costs.
    end = np.array([np.nonzero(row)[0][-1] for row in mask])
    raw = hidden[np.arange(len(end)), end] @ head_w.T + head_b
    if normalize:
        std = np.sqrt(var)
        raw = (raw - mean) / (std + 1e-8) if score_type == "reward" else raw / (std + 1e-8)
    model = load_score_model(tmp_path)
    assert model.head.labels == (score_type,)
    np.testing.assert_allclose(model.scores(tokens, mask), raw, atol=1e-4, rtol=1e-4)


def test_beaver_head_mismatches_are_named(tmp_path):
    write_beaver(tmp_path, bias=False)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["bias"] = True
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="lacks 'score_head.bias'"):
        load_score_model(tmp_path)
    raw.update(bias=False, score_dim=2)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="score_dim 2"):
        load_score_model(tmp_path)


def test_a_causal_lm_is_not_a_score_model(tiny_checkpoints):
    with pytest.raises(CheckpointError, match="not a sequence classifier or score model"):
        load_score_model(tiny_checkpoints["llama"].path)


def test_id2label_that_disagrees_with_the_head_is_named(tmp_path):
    build_classifier("qwen2", tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["id2label"] = {"0": "a", "1": "b", "2": "c"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="id2label names 3 outputs but the score head has 2"):
        load_score_model(tmp_path)
