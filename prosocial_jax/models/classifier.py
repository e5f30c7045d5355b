"""Sequence classifiers and reward / cost models: a decoder trunk read by a linear score head.

Two checkpoint layouts are understood, both HF safetensors folders:

- transformers' `LlamaForSequenceClassification`, `Qwen2ForSequenceClassification`,
  `MistralForSequenceClassification`, `GemmaForSequenceClassification`: the trunk's tensors plus
  `score.weight` [R, D] (no bias). A sequence's scores are read at its last token that is not the
  config's `pad_token_id` (what transformers does, so a row ending in an EOS that doubles as the
  pad token is read one token earlier, as the model was trained). `id2label` names the outputs.
- Beaver-style score models of PKU-SafeRLHF (`LlamaForScore`): `score_head.weight` [R, D] (plus
  `score_head.bias` when the config's `bias` is true), read at the last attended token, and,
  when the config sets `do_normalize`, normalised with the saved running mean / variance
  (`normalizer.mean` / `normalizer.var`, falling back to the config's `mean` / `var`) the way
  safe-rlhf does: affine for rewards, scale for costs. For a cost model, cost > 0 means unsafe.

`load_score_model(path)` returns a `ScoreModel`; `ScoreModel.scores(tokens, mask)` gives the
float32 scores [B, R] of padded rows in one jitted forward pass (sharded over the model's mesh
when it has one).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from prosocial_jax.models import hf, sharding
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_hidden
from prosocial_jax.models.model import Model, parse_dtype, prefix_array, resolve_checkpoint
from prosocial_jax.models.tokenizer import load_tokenizer

# architecture -> the model_type its trunk must have
CLASSIFIER_ARCHITECTURES = {
    "LlamaForSequenceClassification": "llama",
    "Qwen2ForSequenceClassification": "qwen2",
    "Qwen3ForSequenceClassification": "qwen3",
    "MistralForSequenceClassification": "mistral",
    "GemmaForSequenceClassification": "gemma",
    "Gemma2ForSequenceClassification": "gemma2",
    "Gemma3TextForSequenceClassification": "gemma3_text",
    "Phi3ForSequenceClassification": "phi3",
}
SCORE_MODEL_ARCHITECTURES = {"LlamaForScore": "llama"}  # PKU-SafeRLHF's Beaver reward / cost

# config.json keys of safe-rlhf's score head; they describe the head, not the trunk.
_SCORE_HEAD_KEYS = ("score_dim", "bias", "score_type", "do_normalize", "normalizer_type",
                    "momentum", "mean", "var")
_SCORE_TYPES = ("reward", "cost", "critic")
# safe-rlhf's normalisation per score type, and its epsilon.
_NORMALIZE_FUNCTION = {"reward": "affine", "cost": "scale", "critic": "identity"}
_NORMALIZE_EPSILON = 1e-8
# Buffers a Beaver checkpoint carries next to its weights (the count is an int64: no weight).
_NORMALIZER_TENSORS = ("normalizer.mean", "normalizer.var")
_SKIPPED_TENSORS = ("normalizer.count",)


@dataclasses.dataclass(frozen=True)
class ScoreHead:
    """What the head's outputs mean and where they are read."""

    architecture: str
    labels: tuple[str, ...]  # one name per output (id2label, else "score" / "score_<i>")
    pad_token_id: int | None  # classifiers read the last non-pad token; None: last attended
    score_type: str | None = None  # Beaver: "reward", "cost" or "critic"
    normalize: str = "identity"  # "affine", "scale" or "identity" (applied when do_normalize)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def num_outputs(self) -> int:
        return len(self.labels)


@functools.partial(jax.jit, static_argnums=(0,))
def _end_scores(config: ModelConfig, params, weight_RxD, bias_R, tokens_BxT, mask_BxT,
                end_BxT, prefix_1xP):
    hidden_BxTxD = forward_hidden(config, params, tokens_BxT, mask_BxT, prefix_1xP)
    # The last position each row's head reads (rows with no such position read position 0).
    last_B = jnp.argmax(jnp.where(end_BxT, jnp.arange(end_BxT.shape[1]), -1), axis=-1)
    end_BxD = jnp.take_along_axis(hidden_BxTxD, last_B[:, None, None], axis=1)[:, 0]
    # As transformers: the head runs in the model's dtype, the result is then float32.
    scores_BxR = (end_BxD @ weight_RxD.T.astype(end_BxD.dtype)).astype(jnp.float32)
    return scores_BxR + bias_R


@dataclasses.dataclass
class ScoreModel:
    """A trunk (`Model` without its LM head) and a score head [R, D]."""

    trunk: Model
    head: ScoreHead
    weight: jax.Array  # [R, D]
    bias: jax.Array  # [R] float32 (zeros when the checkpoint has none)

    @property
    def tokenizer(self):
        return self.trunk.tokenizer

    @property
    def pad_id(self) -> int:
        return self.trunk.pad_id

    def scores(self, token_ids, attention_mask, prefix=None) -> np.ndarray:
        """Float32 scores [B, R] of padded rows [B, T] (mask 1 on real tokens), normalised
        when the checkpoint says so. `prefix`: token ids every row starts with, run once
        (see `Model.logits_at`); the rows are then their right-padded continuations."""
        tokens = np.asarray(token_ids, np.int32)
        mask = np.asarray(attention_mask).astype(bool)
        if tokens.ndim != 2 or mask.shape != tokens.shape:
            raise ValueError(f"token_ids {tokens.shape} and attention_mask {mask.shape} must "
                             "both be [batch, time]")
        if not mask.any(axis=1).all():
            raise ValueError("every row needs at least one real token (attention_mask 1)")
        end = mask
        if self.head.pad_token_id is not None:
            end = mask & (tokens != self.head.pad_token_id)
            end[~end.any(axis=1)] = mask[~end.any(axis=1)]  # a row of pad tokens only
        batch = {"tokens": tokens, "mask": mask, "end": end}
        if self.trunk.mesh is not None:
            batch = sharding.place_batch(batch, self.trunk.mesh)
        raw = sharding.to_host(_end_scores(self.trunk.config, self.trunk.params, self.weight,
                                     self.bias, batch["tokens"], batch["mask"], batch["end"],
                                     prefix_array(prefix, self.trunk.config)))
        return normalise_scores(self.head, raw)


def normalise_scores(head: ScoreHead, raw: np.ndarray) -> np.ndarray:
    """safe-rlhf's `Normalizer.normalize` (identity unless the checkpoint asks for it)."""
    if head.normalize == "identity" or head.mean is None or head.std is None:
        return raw
    mean, std = np.asarray(head.mean, np.float32), np.asarray(head.std, np.float32)
    if head.normalize == "affine":
        return (raw - mean) / (std + _NORMALIZE_EPSILON)
    return raw / (std + _NORMALIZE_EPSILON)  # "scale"


# ---------------------------------------------------------------------------- loading
def _read_config(folder) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise hf.CheckpointError(f"{folder}: no config.json (a score model is a checkpoint "
                                 "folder)")
    return hf.read_json_object(path)


def _architecture(raw: dict[str, Any], where: str) -> str:
    known = {**CLASSIFIER_ARCHITECTURES, **SCORE_MODEL_ARCHITECTURES}
    architectures = raw.get("architectures") or []
    found = [a for a in architectures if a in known]
    if not found:
        raise hf.CheckpointError(
            f"{where}: architectures {architectures} is not a sequence classifier or score "
            f"model (supported: {', '.join(known)})")
    architecture = found[0]
    if raw.get("model_type") != known[architecture]:
        raise hf.CheckpointError(f"{where}: model_type {raw.get('model_type')!r} does not "
                                 f"match architecture {architecture}")
    return architecture


def _labels(raw: dict[str, Any], count: int, where: str) -> tuple[str, ...]:
    id2label = raw.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            ordered = [str(id2label[k]) for k in sorted(id2label, key=int)]
        except ValueError:
            raise hf.CheckpointError(f"{where}: id2label keys must be integers, got "
                                     f"{sorted(id2label)}") from None
        # transformers' placeholders ("LABEL_0", ...) carry no meaning (a config saved with
        # the default num_labels of 2 lists two of them whatever its head has).
        if not all(name == f"LABEL_{i}" for i, name in enumerate(ordered)):
            if len(ordered) != count:
                raise hf.CheckpointError(f"{where}: id2label names {len(ordered)} outputs but "
                                         f"the score head has {count}")
            return tuple(ordered)
    return ("score",) if count == 1 else tuple(f"score_{i}" for i in range(count))


def load_score_model(path: str | os.PathLike, dtype=None,
                     mesh: Mesh | str | None = None) -> ScoreModel:
    """Loads a sequence-classification or Beaver-style score checkpoint folder (a local path or
    `hf://owner/name`). `dtype=None` keeps the stored dtype; `mesh` shards the trunk as
    `load_model` does (the head is replicated)."""
    source = resolve_checkpoint(path)
    if not source.is_dir():
        raise hf.CheckpointError(f"{source}: a score model is a checkpoint folder "
                                 "(config.json + safetensors)")
    raw = _read_config(source)
    where = str(source / "config.json")
    architecture = _architecture(raw, where)
    beaver = architecture in SCORE_MODEL_ARCHITECTURES
    trunk_raw = {k: v for k, v in raw.items() if not (beaver and k in _SCORE_HEAD_KEYS)}
    config = ModelConfig.from_hf_dict(trunk_raw, source=where)
    names, get = hf.read_safetensors(hf.safetensors_files(source),
                                     skip=_SKIPPED_TENSORS if beaver else ())
    target_dtype = parse_dtype(dtype)

    head_names = (("score_head.weight", "score_head.bias", *_NORMALIZER_TENSORS) if beaver
                  else ("score.weight",))
    weight_name = head_names[0]
    if weight_name not in names:
        raise hf.CheckpointError(f"{source}: tensor {weight_name!r} is missing (the "
                                 f"{architecture} score head)")
    weight = get(weight_name)
    if weight.ndim != 2 or weight.shape[1] != config.hidden_size:
        raise hf.CheckpointError(f"{source}: tensor {weight_name!r} has shape {weight.shape}, "
                                 f"expected [outputs, {config.hidden_size}]")
    count = weight.shape[0]
    bias = np.zeros(count, np.float32)
    head = ScoreHead(architecture, _labels(raw, count, where),
                     pad_token_id=None if beaver else config.pad_token_id)
    if beaver:
        head, bias = _beaver_head(raw, head, names, get, count, source)
    params = hf.params_from_tensors(config, names - set(head_names), get, target_dtype,
                                    source=str(source), lm_head=False)
    weight = weight.astype(target_dtype or weight.dtype)
    params, mesh = sharding.place_params(config, params, mesh)
    trunk = Model(config=config, params=params, tokenizer=load_tokenizer(source), mesh=mesh,
                  source=str(source))
    return ScoreModel(trunk, head, jnp.asarray(weight), jnp.asarray(bias, jnp.float32))


def _beaver_head(raw, head: ScoreHead, names, get, count: int, source
                 ) -> tuple[ScoreHead, np.ndarray]:
    where = f"{source}/config.json"
    score_dim = raw.get("score_dim", 1)
    if score_dim != count:
        raise hf.CheckpointError(f"{where}: score_dim {score_dim} but 'score_head.weight' has "
                                 f"{count} rows")
    score_type = raw.get("score_type", "reward")
    if score_type not in _SCORE_TYPES:
        raise hf.CheckpointError(f"{where}: score_type {score_type!r} is not one of "
                                 f"{list(_SCORE_TYPES)}")
    has_bias = bool(raw.get("bias", False))
    if has_bias != ("score_head.bias" in names):
        raise hf.CheckpointError(f"{source}: config 'bias' is {has_bias} but the checkpoint "
                                 f"{'lacks' if has_bias else 'has'} 'score_head.bias'")
    bias = (np.asarray(get("score_head.bias"), np.float32).reshape(count) if has_bias
            else np.zeros(count, np.float32))
    labels = head.labels if head.labels != ("score",) else (score_type,)
    head = dataclasses.replace(head, labels=labels, score_type=score_type)
    if not raw.get("do_normalize", False):
        return head, bias
    mean = (get("normalizer.mean") if "normalizer.mean" in names else raw.get("mean"))
    var = (get("normalizer.var") if "normalizer.var" in names else raw.get("var"))
    if mean is None or var is None:
        raise hf.CheckpointError(f"{where}: do_normalize is true but neither the checkpoint "
                                 "nor the config holds the normalizer's mean and var")
    mean = np.asarray(mean, np.float64).reshape(-1)
    var = np.asarray(var, np.float64).reshape(-1)
    if mean.shape != (count,) or var.shape != (count,) or (var < 0).any():
        raise hf.CheckpointError(f"{source}: normalizer mean {mean.tolist()} / var "
                                 f"{var.tolist()} do not fit a {count}-output head")
    return dataclasses.replace(head, normalize=_NORMALIZE_FUNCTION[score_type],
                               mean=tuple(mean.tolist()),
                               std=tuple(np.sqrt(var).tolist())), bias
