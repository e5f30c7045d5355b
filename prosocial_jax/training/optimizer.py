"""The one optimiser both trainers use: AdamW under linear warm-up and cosine decay, after
global-norm clipping.

The fine-tune and Pv-Arm settings share the field names read here (`OptimizerSettings`), so one
builder serves both; a trainer that transforms its gradients first (Pv-Arm's PCGrad, which turns
K attribute-stacked gradients into one update) passes that transformation as `first`, and it
runs at the head of the chain, before clipping.
"""

from __future__ import annotations

from typing import Protocol

import optax


class OptimizerSettings(Protocol):
    steps: int
    learning_rate: float
    warmup_steps: int
    end_learning_rate_fraction: float
    weight_decay: float
    grad_clip: float  # global-norm clipping; 0 = off


def warmup_cosine_adamw(settings: OptimizerSettings,
                        first: optax.GradientTransformation | None = None,
                        last: optax.GradientTransformation | None = None
                        ) -> optax.GradientTransformationExtraArgs:
    """`first` (if any), global-norm clipping (if `grad_clip` > 0), then AdamW whose learning
    rate climbs linearly from 0 over `warmup_steps` and decays on a cosine to
    `learning_rate * end_learning_rate_fraction` at `steps`, then `last` (if any: a mask of
    the final updates, which weight decay cannot get past)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=settings.learning_rate, warmup_steps=settings.warmup_steps,
        decay_steps=max(settings.steps, settings.warmup_steps + 1),  # counts the warm-up too
        end_value=settings.learning_rate * settings.end_learning_rate_fraction)
    clip = (optax.clip_by_global_norm(settings.grad_clip) if settings.grad_clip > 0
            else optax.identity())
    head = () if first is None else (first,)
    tail = () if last is None else (last,)
    return optax.chain(*head, clip, optax.adamw(schedule, weight_decay=settings.weight_decay),
                       *tail)
