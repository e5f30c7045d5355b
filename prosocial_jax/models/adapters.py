"""PBLoRA: one preference-conditioned low-rank adapter for K attributes (the paper's Pv-Arm).

For every targeted linear layer W0 (out x in; see `projections.PROJECTIONS`), stacked over the
L layers:

    A1 [r1, in], A2 [r2, in], B1 [out, r1], B2 [out, r2], W [r1, r1], zeta [K, r2*r2]
    M(alpha) = reshape(alpha @ zeta, (r2, r2))            (row-major, no bias)
    h = W0 x + s * (B1 W A1 x + B2 M(alpha) A2 x),       s = lora_alpha / r2

alpha is an input with one row per batch row ([B, K], K attributes), so every row may carry its
own preference. The update is applied in the cheap order (x A^T, then the r x r cores, then B^T);
dW(alpha) is never materialised. B1 = B2 = 0 at initialisation, so a fresh adapter leaves the
backbone unchanged.

File format (interop contract): a folder with `adapter_config.json` (r1, r2, lora_alpha,
attributes, safety_attribute, target_modules, base_model, dropout) and `adapter.safetensors`
with one float32 tensor per layer and factor, named after the HF module it adapts
(`model.layers.0.self_attn.q_proj.A1`, `model.layers.3.mlp.down_proj.zeta`), in HF [out, in]
orientation, and the metadata {"format": "prosocial_jax.pblora"}. Loading refuses unknown keys,
missing or extra tensors, non-finite values and (given the backbone's config) wrong shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from prosocial_jax import settings
from prosocial_jax.files import write_output_folder
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.projections import FUSED, PROJECTIONS, expand_fused

DEFAULT_ATTRIBUTES = ("harmlessness", "empathy", "sensitivity", "non_judgmental",
                      "truthfulness", "helpfulness")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj")
FACTORS = ("A1", "A2", "B1", "B2", "W", "zeta")
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter.safetensors"


class AdapterError(ValueError):
    """An adapter that does not fit its backbone, or a bad preference vector."""


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    r1: int = 4
    r2: int = 4
    lora_alpha: float = 8.0
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    safety_attribute: str = "harmlessness"
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    base_model: str = ""
    dropout: float = 0.05  # on the adapter's input, training only

    def __post_init__(self):
        settings.coerce(self, "adapter config", AdapterError)
        settings.positive(self, "adapter config", "lora_alpha", error=AdapterError)
        if self.r1 < 1 or self.r2 < 1:
            raise AdapterError(f"ranks must be >= 1, got r1={self.r1}, r2={self.r2}")
        if len(set(self.attributes)) != len(self.attributes) or not self.attributes:
            raise AdapterError(f"attributes must be distinct and non-empty: {self.attributes}")
        if self.safety_attribute not in self.attributes:
            raise AdapterError(f"safety_attribute {self.safety_attribute!r} is not one of the "
                               f"attributes {list(self.attributes)}")
        # A fused module's name (Phi-3's qkv_proj, gate_up_proj) targets each of its parts.
        object.__setattr__(self, "target_modules", expand_fused(self.target_modules))
        unknown = [t for t in self.target_modules if t not in PROJECTIONS]
        if unknown or not self.target_modules:
            raise AdapterError(f"target_modules {unknown or '[]'} not supported (choose from "
                               f"{', '.join([*PROJECTIONS, *FUSED])})")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.r2

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    @property
    def safety_index(self) -> int:
        return self.attributes.index(self.safety_attribute)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "attributes": list(self.attributes),
                "target_modules": list(self.target_modules)}


@dataclasses.dataclass
class Adapter:
    """A PBLoRA adapter: its config and its factor pytree ({target: {factor: [L, ...]}})."""

    config: AdapterConfig
    params: dict

    def preference(self, value) -> np.ndarray:
        """A validated, normalised preference vector or batch of them (see `resolve_preference`)."""
        return resolve_preference(self.config, value)[0]


@dataclasses.dataclass(frozen=True)
class AdapterSet:
    """K single-attribute adapters on one backbone, each run at every decoding step: the
    GenARM-style multi-ARM baseline that one preference-conditioned adapter replaces.

    Guided decoding reads it as one adapter over the members' attributes (in order): under a
    preference alpha the prosocial stage steers by sum_k alpha_k log pi_k, and the safety stage
    filters by the log-probs of the member whose attribute is `safety_attribute`. Every member
    has its own backbone cache, so a step costs K adapted forward passes (the Pv-Arm: 2)."""

    adapters: tuple[Adapter, ...]
    safety_attribute: str = "harmlessness"

    def __post_init__(self):
        object.__setattr__(self, "adapters", tuple(self.adapters))
        if not self.adapters:
            raise AdapterError("an adapter set needs at least one adapter")
        for index, member in enumerate(self.adapters):
            if member.config.num_attributes != 1:
                raise AdapterError(f"adapter set member {index} has attributes "
                                   f"{list(member.config.attributes)}: each member is trained "
                                   "for one attribute")
        _ = self.config  # validates the names: distinct, the safety attribute among them

    @property
    def config(self) -> AdapterConfig:
        """The members' attributes as one config (ranks and targets: the first member's)."""
        names = tuple(member.config.attributes[0] for member in self.adapters)
        return dataclasses.replace(self.adapters[0].config, attributes=names,
                                   safety_attribute=self.safety_attribute)

    @property
    def params(self) -> tuple[dict, ...]:
        return tuple(member.params for member in self.adapters)

    def preference(self, value) -> np.ndarray:
        """A validated, normalised preference over the members (see `resolve_preference`)."""
        return resolve_preference(self.config, value)[0]


def single_attribute_config(config: AdapterConfig, attribute: str) -> AdapterConfig:
    """`config` narrowed to one attribute (an `AdapterSet` member's config)."""
    return dataclasses.replace(config, attributes=(attribute,), safety_attribute=attribute)


# ---------------------------------------------------------------------------- shapes and init
def factor_shapes(model_config: ModelConfig, config: AdapterConfig,
                  target: str) -> dict[str, tuple[int, ...]]:
    """Per-layer shape of every factor of one targeted projection."""
    out, inp = PROJECTIONS[target].shape(model_config)
    r1, r2, k = config.r1, config.r2, config.num_attributes
    return {"A1": (r1, inp), "A2": (r2, inp), "B1": (out, r1), "B2": (out, r2), "W": (r1, r1),
            "zeta": (k, r2 * r2)}


def init_adapter(model_config: ModelConfig, config: AdapterConfig, key: jax.Array) -> Adapter:
    """The reference initialisation: uniform A1, A2, W, zeta; B1 = B2 = 0 (float32)."""
    params = {}
    layers = model_config.num_layers
    for target, target_key in zip(config.target_modules,
                                  jax.random.split(key, len(config.target_modules))):
        shapes = factor_shapes(model_config, config, target)
        keys = jax.random.split(target_key, 4)
        inp = shapes["A1"][1]

        def uniform(k, shape, bound):
            return jax.random.uniform(k, (layers, *shape), jnp.float32, -bound, bound)

        params[target] = {
            "A1": uniform(keys[0], shapes["A1"], inp ** -0.5),
            "A2": uniform(keys[1], shapes["A2"], inp ** -0.5),
            "B1": jnp.zeros((layers, *shapes["B1"]), jnp.float32),
            "B2": jnp.zeros((layers, *shapes["B2"]), jnp.float32),
            "W": uniform(keys[2], shapes["W"], config.r1 ** -0.5),
            "zeta": uniform(keys[3], shapes["zeta"], 1.0 / config.r2),
        }
    return Adapter(config, params)


def extend_adapter(adapter: Adapter, attribute: str, key: jax.Array) -> Adapter:
    """`adapter` with one more attribute, last: a new row of every zeta (the preference-to-core
    map), initialised as `init_adapter` initialises zeta; every other factor is shared as it is.
    Under any preference that gives the new attribute weight 0, the extended adapter is the old
    one exactly (M(alpha) = alpha @ zeta never reads the new row), so the old attributes keep
    their behaviour while the new row is trained (`pvarm.train_arm(extend=...)`)."""
    config = adapter.config
    if attribute in config.attributes:
        raise AdapterError(f"attribute {attribute!r} is already one of the adapter's "
                           f"({', '.join(config.attributes)})")
    extended = dataclasses.replace(config, attributes=(*config.attributes, attribute))
    params = {}
    for (target, factors), target_key in zip(sorted(adapter.params.items()),
                                             jax.random.split(key, len(adapter.params))):
        zeta = factors["zeta"]  # [L, K, r2 * r2]
        row = jax.random.uniform(target_key, (zeta.shape[0], 1, zeta.shape[2]), zeta.dtype,
                                 -1.0 / config.r2, 1.0 / config.r2)
        params[target] = {**factors, "zeta": jnp.concatenate([zeta, row], axis=1)}
    return Adapter(extended, params)


# ---------------------------------------------------------------------------- the update
def delta(x: jax.Array, factors: Mapping[str, jax.Array], preference: jax.Array,
          scale: float, dropout: float = 0.0, key: jax.Array | None = None) -> jax.Array:
    """s * (B1 W A1 x + B2 M(alpha) A2 x) for one layer's factors, in the cheap order.

    `x` is the projection's input [B, T, in], `preference` [B, K] has one row per batch row;
    returns [B, T, out]. Dropout (on x, shared by both branches) applies only when a key is
    given.
    """
    r1, r2 = factors["W"].shape[0], factors["A2"].shape[0]
    chex.assert_rank(x, 3)
    chex.assert_shape([factors["A1"], factors["A2"]], [(r1, x.shape[-1]), (r2, x.shape[-1])])
    chex.assert_shape(preference, (x.shape[0], factors["zeta"].shape[0]))
    dtype = x.dtype
    # The scope names these operations in profiles (op_name ".../pblora/...").
    with jax.named_scope("pblora"):
        if key is not None and dropout > 0.0:
            keep = jax.random.bernoulli(key, 1.0 - dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - dropout), 0).astype(dtype)
        f = {name: value.astype(dtype) for name, value in factors.items()}
        shared = x @ f["A1"].T  # [B, T, r1]
        shared = shared @ f["W"].T
        core = (preference.astype(dtype) @ f["zeta"]).reshape(-1, r2, r2)  # M(alpha) [B,r2,r2]
        conditioned = jnp.einsum("btr,bsr->bts", x @ f["A2"].T, core)  # M(alpha) A2 x
        out = shared @ f["B1"].T + conditioned @ f["B2"].T
        return (scale * out).astype(dtype)


def dense_delta(factors: Mapping[str, np.ndarray], preference: np.ndarray,
                scale: float) -> np.ndarray:
    """The materialised dW(alpha) [out, in] of one layer for one preference [K] (reference and
    testing only)."""
    r2 = factors["A2"].shape[0]
    m = (np.asarray(preference) @ factors["zeta"]).reshape(r2, r2)
    return scale * (factors["B1"] @ factors["W"] @ factors["A1"]
                    + factors["B2"] @ m @ factors["A2"])


# ---------------------------------------------------------------------------- preferences
def resolve_preference(config: AdapterConfig, value) -> tuple[np.ndarray, bool]:
    """A preference as float32 [K] or [B, K], normalised to sum 1; returns (vector, normalised?).

    Accepts numbers in the adapter's attribute order, a {name: weight} mapping (unnamed
    attributes get 0), or text "0.2,0.8,..." / "empathy=0.5,helpfulness=0.5".
    """
    names = config.attributes
    if isinstance(value, str):
        value = _parse_preference_text(value, names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise AdapterError(f"preference names {unknown} are not attributes of this adapter "
                               f"({', '.join(names)})")
        value = [float(value.get(name, 0.0)) for name in names]
    array = np.asarray(value, np.float32)
    if array.ndim not in (1, 2) or array.shape[-1] != len(names):
        raise AdapterError(f"a preference needs {len(names)} entries ({', '.join(names)}), got "
                           f"shape {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise AdapterError(f"preference entries must be finite and >= 0, got {array.tolist()}")
    totals = array.sum(-1, keepdims=True)
    if (totals <= 0).any():
        raise AdapterError("a preference vector must not be all zeros")
    normalised = bool((np.abs(totals - 1.0) > 1e-5).any())
    return (array / totals).astype(np.float32), normalised


def _parse_preference_text(text: str, names: Sequence[str]):
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise AdapterError(f"cannot read preference {text!r}: use numbers in the order "
                           f"{','.join(names)} or name=weight pairs") from None


def one_hot(config: AdapterConfig, attribute: str) -> np.ndarray:
    return resolve_preference(config, {attribute: 1.0})[0]


# ---------------------------------------------------------------------------- files
def _tensor_name(target: str, layer: int, factor: str) -> str:
    return f"{PROJECTIONS[target].hf_prefix(layer)}.{factor}"


_NAME = re.compile(r"^model\.layers\.(\d+)\.("
                   + "|".join(sorted({p.hf_module for p in PROJECTIONS.values()}))
                   + r")\.([a-z_]+)\.(" + "|".join(FACTORS) + ")$")


def write_adapter_files(adapter: Adapter, folder: str | os.PathLike) -> None:
    """Writes adapter_config.json + adapter.safetensors into an existing folder."""
    folder = Path(folder)
    tensors = {}
    for target, factors in adapter.params.items():
        for factor in FACTORS:
            stacked = np.asarray(factors[factor], np.float32)
            for layer in range(stacked.shape[0]):
                tensors[_tensor_name(target, layer, factor)] = np.ascontiguousarray(
                    stacked[layer])
    (folder / CONFIG_FILE).write_text(json.dumps(adapter.config.to_json(), indent=2))
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "prosocial_jax.pblora"})


def save_adapter(adapter: Adapter, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes an adapter folder atomically. An existing folder is replaced only if it is a
    previous adapter written by prosocial_jax and `overwrite` is true (see `files`)."""
    return write_output_folder(path, "adapter", lambda tmp: write_adapter_files(adapter, tmp),
                               overwrite, flag="overwrite=True")


ADAPTER_SET_FILE = "adapter_set.json"


def save_adapter_set(arms: AdapterSet, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes an adapter set atomically: each member in `path`/<attribute> (an adapter folder)
    and adapter_set.json naming them in order and the safety attribute."""
    def write(folder: Path) -> None:
        for member in arms.adapters:
            (folder / member.config.attributes[0]).mkdir()
            write_adapter_files(member, folder / member.config.attributes[0])
        (folder / ADAPTER_SET_FILE).write_text(json.dumps(
            {"attributes": list(arms.config.attributes),
             "safety_attribute": arms.safety_attribute}, indent=2))

    return write_output_folder(path, "adapter set", write, overwrite, flag="overwrite=True")


def load_adapter_set(path: str | os.PathLike, model_config: ModelConfig | None = None
                     ) -> AdapterSet:
    """Reads what `save_adapter_set` wrote (each member checked as `load_adapter` checks)."""
    index = Path(path) / ADAPTER_SET_FILE
    if not index.exists():
        raise FileNotFoundError(f"{path}: no {ADAPTER_SET_FILE} (not an adapter set folder)")
    try:
        raw = json.loads(index.read_text())
        names, safety = list(raw["attributes"]), str(raw["safety_attribute"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise AdapterError(f"{index}: expected {{\"attributes\": [...], "
                           f"\"safety_attribute\": ...}} ({err!r})") from None
    return AdapterSet(tuple(load_adapter(Path(path) / name, model_config) for name in names),
                      safety)


def load_adapter(path: str | os.PathLike, model_config: ModelConfig | None = None) -> Adapter:
    """Reads an adapter folder; with the backbone's config, checks every shape against it."""
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.exists():
            raise FileNotFoundError(f"{path}: no {required.name} (not a PBLoRA adapter folder)")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{config_path}: expected a JSON object, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(AdapterConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise AdapterError(f"{config_path}: unknown key(s) {unknown}")
    try:
        config = AdapterConfig(**raw)
    except AdapterError as err:
        raise AdapterError(f"{config_path}: {err}") from None
    layers: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    try:
        with safe_open(weights_path, framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                match = _NAME.match(name)
                if not match or match.group(3) not in config.target_modules:
                    raise AdapterError(f"{weights_path}: unexpected tensor {name!r}")
                layer, _, target, factor = match.groups()
                tensor = handle.get_tensor(name)
                bad = int(np.size(tensor) - np.count_nonzero(np.isfinite(tensor)))
                if bad:
                    raise AdapterError(f"{weights_path}: tensor {name!r} holds {bad} non-finite "
                                       "value(s) (NaN or inf)")
                layers.setdefault(target, {}).setdefault(factor, {})[int(layer)] = tensor
    except AdapterError:
        raise
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({err})") from None
    num_layers = model_config.num_layers if model_config else None
    params = {}
    for target in config.target_modules:
        expected = factor_shapes(model_config, config, target) if model_config else None
        params[target] = {}
        for factor in FACTORS:
            found = layers.get(target, {}).get(factor, {})
            count = num_layers if num_layers is not None else len(found)
            for layer in range(count):
                name = _tensor_name(target, layer, factor)
                if layer not in found:
                    raise AdapterError(f"{weights_path}: tensor {name!r} is missing")
                if expected and tuple(found[layer].shape) != expected[factor]:
                    raise AdapterError(f"{weights_path}: tensor {name!r} has shape "
                                       f"{tuple(found[layer].shape)}, the backbone needs "
                                       f"{expected[factor]}")
            extra = sorted(set(found) - set(range(count)))
            if extra:
                raise AdapterError(f"{weights_path}: tensor "
                                   f"{_tensor_name(target, extra[0], factor)!r} is beyond the "
                                   f"backbone's {count} layers")
            params[target][factor] = jnp.asarray(np.stack([found[i] for i in range(count)]))
    return Adapter(config, params)


def check_adapter_fits(adapter: Adapter | AdapterSet, model_config: ModelConfig) -> None:
    """Raises AdapterError naming the first factor whose shape does not fit the backbone."""
    if isinstance(adapter, AdapterSet):
        for index, member in enumerate(adapter.adapters):
            try:
                check_adapter_fits(member, model_config)
            except AdapterError as error:
                raise AdapterError(f"adapter set member {index}: {error}") from None
        return
    for target, factors in adapter.params.items():
        expected = factor_shapes(model_config, adapter.config, target)
        for factor, value in factors.items():
            shape = (model_config.num_layers, *expected[factor])
            if tuple(value.shape) != shape:
                raise AdapterError(f"adapter factor {target}.{factor} has shape "
                                   f"{tuple(value.shape)}, the backbone needs {shape}")
