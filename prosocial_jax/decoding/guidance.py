"""The guided-decoding rule: safety first (a hard constraint), then the user's preferences.

At each step, with the base model's logits and the Pv-Arm's log-probs under two preferences
(the user's alpha and the one-hot of the adapter's safety attribute):

0. optionally, candidates C = the tokens that repeat no n-gram of the row's answer (no-repeat
   rule; without it C is every token).
1. safe set S = {y in C : lp_s(y) >= max over C of lp_s - tau}; optionally minus banned token
   sequences and tokens below a plausibility floor of the base model (if the floor would empty
   S it is dropped: the safety constraint outranks plausibility). tau = inf disables the
   safety stage.
2. score(y) = lp_b(y) + w * lp_r(y | alpha) on S, -inf elsewhere.
3. pick: greedy argmax, or sample softmax(score / T) with optional top-k / top-p
   (`sampling.sample_tokens`). T = 1 samples the product distribution pi_b * pi_r^w exactly.

Everything per row is a traced array, so changing preferences, strengths or margins never
recompiles. The base model's raw logits stand in for lp_b: they differ by a per-row constant,
which changes neither the argmax, nor any sampled distribution, nor the plausibility test, and
keeps w = 0, tau = inf bit-identical to plain decoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from prosocial_jax import settings
from prosocial_jax.models.adapters import Adapter, AdapterConfig, AdapterError, resolve_preference
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.model import Model

NEG_INF = -jnp.inf
# tau in nats: a token stays in the safe set while the safety stage rates it at least e^-2
# (13.5%) as likely as its favourite. A loose default for an adapter nobody has measured: it
# removes only tokens the safety head clearly rejects and leaves the text to the base model and
# the preferences. How tight to go depends on the adapter's confidence and is measured, not
# guessed: `prosocial-jax guidance-sweep`. On the bundled demo's adapter (README, "The guidance
# sweep"), tau = 2 overrides 1.1% of steps and refuses 10% of held-out harmful requests, tau =
# 0.1 overrides 20% and refuses 75%, with no more loops and the same over-refusal.
DEFAULT_SAFETY_MARGIN = 2.0


class GuidanceError(ValueError):
    """Bad guidance settings (preference, strength, margin) or models that cannot be paired."""


@dataclasses.dataclass(frozen=True)
class GuidanceSettings:
    """The user's guided-decoding settings (defaults of `pj.generate` and `prosocial-jax
    generate`); a prompt row may carry its own preference, guidance and safety_margin."""

    # alpha: one weight per adapter attribute in its order ("0,0.4,0.2,0.1,0.2,0.1") or
    # name=weight pairs ("empathy=0.5,helpfulness=0.5"); normalised to sum 1. None: uniform.
    preference: str | None = None
    guidance: float = 1.0  # w, the Pv-Arm's weight
    safety_margin: float = dataclasses.field(  # tau, nats; inf turns the safety stage off
        default=DEFAULT_SAFETY_MARGIN, metadata={"allow_infinity": True})
    plausibility: float = 0.0  # drop tokens below this fraction of the base's top probability
    no_repeat_ngram: int = 0  # n >= 2: never repeat an n-gram of the answer; 0: off

    def __post_init__(self):
        settings.coerce(self, "guidance settings", GuidanceError)
        settings.positive(self, "guidance settings", "guidance", "safety_margin",
                          "plausibility", error=GuidanceError, allow_zero=True)
        check_no_repeat_ngram(self.no_repeat_ngram, "guidance settings")
        if self.plausibility > 1.0:
            raise GuidanceError(f"guidance settings: plausibility must be in [0, 1], got "
                                f"{self.plausibility}")


@struct.dataclass
class Guidance:
    """Per-row guidance settings for B rows: all traced."""

    preference: jax.Array  # [B, K] the user's alpha, normalised (prosocial stage)
    weight: jax.Array  # [B] w: how strongly the Pv-Arm steers (0 = base model only)
    safety_margin: jax.Array  # [B] tau: inf disables the safety stage for the row
    log_floor: jax.Array  # [B] plausibility: keep y with lp_b(y) >= max lp_b + log_floor
    # E banned token sequences, right-aligned in a window of the W most recent tokens: the last
    # token of sequence e is removed when the row's most recent tokens equal its prefix (-1
    # entries of the prefix match anything). None when there are none: then no step spends
    # anything on them.
    banned_prefix: jax.Array | None = None  # [E, W] int32
    banned_last: jax.Array | None = None  # [E] int32

    @classmethod
    def create(cls, preference: np.ndarray, weight, safety_margin, plausibility=0.0,
               banned: Sequence[Sequence[int]] | None = None) -> Guidance:
        """Validated settings for the rows of `preference` [B, K] (see `row_preferences`).
        `weight`, `safety_margin` and `plausibility` are scalars or one value per row.
        `plausibility` p in [0, 1] keeps tokens whose base probability is at least p times the
        base's most likely token's (0 = off, 1 = only the base's favourite). Guidance w must be
        finite and >= 0; tau >= 0, inf allowed (no safety stage for the row)."""
        rows = preference.shape[0]
        weight_B = per_row_values(weight, rows, "guidance", minimum=0.0)
        margin_B = per_row_values(safety_margin, rows, "safety_margin", minimum=0.0)
        floor_B = per_row_values(plausibility, rows, "plausibility", minimum=0.0, maximum=1.0)
        with np.errstate(divide="ignore"):
            log_floor_B = np.log(floor_B)  # log 0 = -inf: no floor
        guidance = cls(jnp.asarray(preference), jnp.asarray(weight_B), jnp.asarray(margin_B),
                       jnp.asarray(log_floor_B.astype(np.float32)))
        if banned:
            prefix_ExW, last_E = banned_arrays(banned)
            guidance = guidance.replace(banned_prefix=jnp.asarray(prefix_ExW),
                                        banned_last=jnp.asarray(last_E))
        return guidance

    def map_rows(self, fn) -> Guidance:
        """`fn` applied to every per-row array (not to the shared banned sequences)."""
        return self.replace(preference=fn(self.preference), weight=fn(self.weight),
                            safety_margin=fn(self.safety_margin), log_floor=fn(self.log_floor))


def banned_arrays(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned prefix matrix [E, W] (-1 = any token) and last tokens [E] of E banned
    sequences; the window W is the longest prefix (at least 1)."""
    sequences = [list(map(int, s)) for s in sequences]
    if any(not s for s in sequences):
        raise GuidanceError("a banned token sequence must not be empty")
    window = max([len(s) - 1 for s in sequences] + [1])
    prefix = np.full((len(sequences), window), -1, np.int32)
    last = np.zeros((len(sequences),), np.int32)
    for row, seq in enumerate(sequences):
        if len(seq) > 1:
            prefix[row, window - len(seq) + 1:] = seq[:-1]
        last[row] = seq[-1]
    return prefix, last


def row_preferences(adapter: Adapter, preference, rows: int,
                    per_row: Sequence | None = None) -> tuple[np.ndarray, list[bool]]:
    """[rows, K] normalised preferences and, per row, whether normalising changed it.

    `preference` is the default for every row (numbers in the adapter's attribute order, a
    {name: weight} mapping, or text); `per_row[i]`, if not None, replaces it for row i. Errors
    name the row.
    """
    out = np.zeros((rows, adapter.config.num_attributes), np.float32)
    normalised = []
    for row in range(rows):
        value = per_row[row] if per_row is not None and per_row[row] is not None else preference
        if value is None:
            raise GuidanceError(f"row {row}: no preference vector (give one for every row, or "
                                f"a default)")
        try:
            vector, changed = resolve_preference(adapter.config, value)
        except AdapterError as error:
            raise GuidanceError(f"row {row}: {error}") from None
        if vector.ndim != 1:
            raise GuidanceError(f"row {row}: expected one preference vector, got shape "
                                f"{vector.shape}")
        out[row], _ = vector, normalised.append(changed)
    return out, normalised


# Per-row settings for which +inf means something: tau = inf switches the safety stage off for
# the row. Anywhere else an infinity turns the row's scores into inf - inf = NaN (guidance = inf
# made every step pick token 0), so it is refused at entry.
INFINITY_ALLOWED = frozenset({"safety_margin"})


def per_row_values(value, rows: int, name: str, minimum: float | None = None,
                   maximum: float | None = None, allow_inf: bool | None = None) -> np.ndarray:
    """A scalar or one value per row, as float32 [rows], checked per row: not NaN, finite
    (unless `allow_inf`; None: only for the settings in INFINITY_ALLOWED), within
    [minimum, maximum]. Errors name the row and the value."""
    array = np.asarray(value, np.float64)
    if array.shape not in ((), (rows,)):
        raise GuidanceError(f"{name}: expected a scalar or {rows} values, got shape {array.shape}")
    array = np.broadcast_to(array, (rows,))
    allow_inf = name in INFINITY_ALLOWED if allow_inf is None else allow_inf
    with np.errstate(over="ignore"):
        narrow = array.astype(np.float32)
    for row, (wide, value32) in enumerate(zip(array.tolist(), narrow.tolist())):
        if math.isnan(wide):
            raise GuidanceError(f"row {row}: {name} must be a number, got nan")
        if math.isinf(wide) and not allow_inf:
            raise GuidanceError(f"row {row}: {name} must be finite, got {wide}")
        if minimum is not None and wide < minimum:
            raise GuidanceError(f"row {row}: {name} must be >= {minimum}, got {wide}")
        if maximum is not None and wide > maximum:
            raise GuidanceError(f"row {row}: {name} must be <= {maximum}, got {wide}")
        if math.isinf(value32) and not math.isinf(wide):
            raise GuidanceError(f"row {row}: {name} = {wide} does not fit in float32")
    return narrow.copy()


def shared_vocab_size(base: Model, reward: Model) -> int:
    """The vocabulary both models can emit; an error when their tokenizers differ.

    Embedding matrices are often padded past the tokenizer (e.g. Qwen2.5: 151,936 rows for
    151,665 tokens); those trailing rows are not tokens and are excluded, not an error.
    """
    vb, vr = base.config.vocab_size, reward.config.vocab_size
    tb, tr = base.tokenizer, reward.tokenizer
    if tb is not None and tr is not None:
        if len(tb) != len(tr) or tb.get_vocab() != tr.get_vocab():
            raise GuidanceError(
                f"the base model ({base.source}) and the Pv-Arm backbone ({reward.source}) have "
                f"different tokenizers ({len(tb)} vs {len(tr)} tokens): guided decoding adds "
                f"their log-probs token by token, so they must share one vocabulary")
        tokens = len(tb)
        if tokens > min(vb, vr):
            raise GuidanceError(f"the tokenizer has {tokens} tokens but an embedding matrix has "
                                f"only {min(vb, vr)} rows (base {vb}, Pv-Arm {vr})")
        return tokens
    if vb != vr:
        raise GuidanceError(f"vocabulary sizes differ: base {vb} ({base.source}) vs Pv-Arm "
                            f"backbone {vr} ({reward.source}), and without tokenizers the "
                            f"shared tokens cannot be checked")
    return vb


def recent_matches(recent: jax.Array, guidance: Guidance) -> jax.Array:
    """[B, E]: which banned sequences' prefixes end the rows' recent tokens [B, >= W]."""
    prefix_1xExW = guidance.banned_prefix[None]
    window = prefix_1xExW.shape[-1]
    recent_Bx1xW = recent[:, None, -window:]
    return jnp.all((prefix_1xExW < 0) | (prefix_1xExW == recent_Bx1xW), axis=-1)


def check_no_repeat_ngram(n: int, where: str, error: type[Exception] = GuidanceError) -> None:
    """The no-repeat rule's n: 0 (off) or an n-gram size >= 2 (n = 1 would ban every token
    the answer has used)."""
    if n != 0 and n < 2:
        raise error(f"{where}: no_repeat_ngram must be 0 (off) or an n-gram size >= 2, got {n}")


def repeated_ngram_ban(generated: jax.Array, step: jax.Array, n: int, vocab: int) -> jax.Array:
    """[B, vocab] bool: the tokens that would complete an n-gram the row has already generated.

    `generated` [B, C] holds each row's new tokens (slots >= `step` not yet written). Only the
    generated tokens count, not the prompt: an answer may quote its question. The suffix of the
    row's last n - 1 tokens is compared with every earlier window of n - 1 tokens; the token that
    followed a matching window is banned (transformers' `no_repeat_ngram_size`, on new tokens).
    """
    batch, slots = generated.shape
    if n < 2 or slots < n:
        return jnp.zeros((batch, vocab), bool)
    width = n - 1
    starts = slots - width  # windows whose following token lies inside the buffer
    suffix_BxW = jax.lax.dynamic_slice(generated, (0, jnp.maximum(step - width, 0)),
                                       (batch, width))
    windows_BxSxW = jnp.stack([generated[:, k:k + starts] for k in range(width)], axis=-1)
    # A window counts once its following token exists (start + width < step), and only when the
    # row has a full suffix of its own (step >= width).
    written = (jnp.arange(starts) + width < step) & (step >= width)
    match_BxS = jnp.all(windows_BxSxW == suffix_BxW[:, None, :], axis=-1) & written[None]
    following_BxS = jnp.clip(generated[:, width:], 0, vocab - 1)
    return jnp.zeros((batch, vocab), bool).at[
        jnp.arange(batch)[:, None], following_BxS].max(match_BxS)


def guided_scores(base_logits: jax.Array, reward_logits: jax.Array, guidance: Guidance,
                  recent: jax.Array | None, vocab: int, repeats: jax.Array | None = None):
    """Scores over `vocab` tokens (-inf outside the allowed set) and per-row statistics.

    `base_logits` [B, >= vocab] are the base model's; `reward_logits` [R, >= vocab] the
    Pv-Arm's: R = B prosocial rows, or with the safety stage 2B rows, each prompt's prosocial
    row followed by its safety row (`pvarm_rows`: a row's pair stays on one device). `recent`
    [B, W] (None without banned sequences) holds each row's latest tokens; `repeats` [B, vocab]
    (None: off) the tokens that would repeat an n-gram of the answer (`repeated_ngram_ban`).
    Returns (scores [B, vocab], safety override [B] bool, allowed-set size [B] int32).
    """
    batch = base_logits.shape[0]
    chex.assert_rank([base_logits, reward_logits], 2)
    chex.assert_shape(reward_logits, ({batch, 2 * batch}, None))
    chex.assert_axis_dimension_gteq(base_logits, 1, vocab)
    chex.assert_axis_dimension_gteq(reward_logits, 1, vocab)
    chex.assert_shape([guidance.weight, guidance.safety_margin, guidance.log_floor], (batch,))
    if guidance.banned_last is not None:
        chex.assert_shape(recent, (batch, guidance.banned_prefix.shape[-1]))
    base = base_logits[:, :vocab].astype(jnp.float32)
    reward = jax.nn.log_softmax(reward_logits[:, :vocab].astype(jnp.float32), axis=-1)
    prosocial, safety = split_pvarm_rows(reward, batch)
    weight = guidance.weight[:, None]
    steer = jnp.where(weight > 0, weight * prosocial, 0.0)  # 0 * -inf would be NaN
    unconstrained = base + steer

    # The no-repeat rule narrows the candidates before the safety stage looks at them: the
    # safety head's favourite is often the refusal it has just written ("I can't help with
    # that. I can't help ..."), and with a tight margin it would be the only safe token, so the
    # rule could never act as a soft extra. The margin is measured from the best candidate.
    candidates = jnp.ones_like(base, dtype=bool)
    if repeats is not None:
        fresh = ~repeats
        candidates = jnp.where(jnp.any(fresh, axis=-1, keepdims=True), fresh, candidates)
    if safety is not None:  # the safety stage
        margin = guidance.safety_margin[:, None]
        # What the safety stage alone allows (the override statistic reports on it).
        safe_alone = safety >= jnp.max(safety, axis=-1, keepdims=True) - margin
        safety = jnp.where(candidates, safety, NEG_INF)
        safe = candidates & (safety >= jnp.max(safety, axis=-1, keepdims=True) - margin)
    else:
        safe = safe_alone = candidates
    allowed = safe
    if guidance.banned_last is not None:
        last = guidance.banned_last
        hits = (recent_matches(recent, guidance) & (last[None] < vocab)).astype(jnp.int32)
        banned = jnp.zeros(safe.shape, jnp.int32).at[
            jnp.arange(batch)[:, None], jnp.clip(last, 0, vocab - 1)[None]].max(hits) > 0
        allowed = safe & ~banned
        allowed = jnp.where(jnp.any(allowed, axis=-1, keepdims=True), allowed, safe)
    plausible = base >= (jnp.max(base, axis=-1, keepdims=True) + guidance.log_floor[:, None])
    with_floor = allowed & plausible
    allowed = jnp.where(jnp.any(with_floor, axis=-1, keepdims=True), with_floor, allowed)

    scores = jnp.where(allowed, unconstrained, NEG_INF)
    favourite = jnp.argmax(unconstrained, axis=-1)
    overridden = ~jnp.take_along_axis(safe_alone, favourite[:, None], axis=-1)[:, 0]
    return scores, overridden, jnp.sum(allowed, axis=-1, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class GuideSpec:
    """The static half of guided decoding (part of the compiled program's identity)."""

    reward_config: ModelConfig
    adapter_config: AdapterConfig
    vocab: int  # tokens both models can emit
    safety_stage: bool  # False: the Pv-Arm runs on B rows (prosocial only), tau is ignored
    no_repeat_ngram: int = 0  # n >= 2: no n-gram twice in an answer; 0: off
    reward_layout: str = "sharded"  # the Pv-Arm backbone's layout on the mesh (its cache's too)
    # An `AdapterSet` (multi-ARM baseline): each member's config, in `adapter_config`'s
    # attribute order; every member runs on the B rows with its own cache. Empty: one Pv-Arm.
    arm_configs: tuple[AdapterConfig, ...] = ()
    # The Pv-Arm's backbone is the base model itself (no mesh, one Pv-Arm): each step runs one
    # forward over every prompt's base row and Pv-Arm rows together, the adapter applied to the
    # Pv-Arm rows only, so the weights are read once a step instead of twice.
    shared_backbone: bool = False


@struct.dataclass
class GuideInputs:
    """The traced half: the Pv-Arm backbone's weights, the adapter's factors, the settings."""

    reward_params: Any
    adapter_params: Any
    guidance: Guidance

    def reward_preferences(self, spec: GuideSpec) -> jax.Array:
        """Preference rows of the one Pv-Arm forward (`pvarm_rows` order): each row's alpha,
        then, with the safety stage, its safety one-hot."""
        alpha = self.guidance.preference
        if not spec.safety_stage:
            return alpha
        config = spec.adapter_config  # the safety one-hot is static: part of the adapter config
        safety = jnp.zeros_like(alpha).at[:, config.safety_index].set(1.0)
        return pvarm_rows(jnp.stack([alpha, safety], axis=1))


def mix_arms(arm_logits: jax.Array, preference: jax.Array, vocab: int,
             safety_index: int | None) -> jax.Array:
    """The multi-ARM baseline's reward rows, as `guided_scores` reads the Pv-Arm's: from each
    member's logits [A, B, >= vocab] and the rows' preferences [B, A], the prosocial row
    sum_a alpha_a log pi_a and, with `safety_index`, that member's log-probs as the safety row
    (`pvarm_rows` order) [B or 2B, vocab]. Log-probs in, so the safety row is the member's own
    distribution; `guided_scores` normalises the prosocial row again, a per-row constant."""
    log_probs = jax.nn.log_softmax(arm_logits[..., :vocab].astype(jnp.float32), axis=-1)
    weights_AxB = preference.T[..., None]
    prosocial = jnp.sum(jnp.where(weights_AxB > 0, weights_AxB * log_probs, 0.0), axis=0)
    if safety_index is None:
        return prosocial
    return pvarm_rows(jnp.stack([prosocial, log_probs[safety_index]], axis=1))


def pvarm_rows(x: jax.Array, copies: int | None = None) -> jax.Array:
    """The Pv-Arm's rows from per-prompt rows: `x` [B, ...] repeated `copies` times (prosocial,
    safety), or `x` [B, copies, ...] flattened, to [copies * B, ...] with each prompt's copies
    adjacent. Rows split over the mesh's "data" axis in blocks, so a prompt's two Pv-Arm rows
    lie on the device of its base row: the step moves no rows between devices (stacked as
    [all prosocial; all safety], they would cross devices every step)."""
    if copies is not None:
        x = jnp.repeat(x[:, None], copies, axis=1)
    return x.reshape(-1, *x.shape[2:])


def split_pvarm_rows(reward: jax.Array, batch: int) -> tuple[jax.Array, jax.Array | None]:
    """`pvarm_rows` undone: (prosocial rows [B, ...], safety rows [B, ...] or None)."""
    if reward.shape[0] == batch:
        return reward, None
    pairs = reward.reshape(batch, 2, *reward.shape[1:])
    return pairs[:, 0], pairs[:, 1]
