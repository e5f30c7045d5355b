"""The linear projections of a decoder layer, described once.

Each projection is known under several names: its place in our parameter pytree
(`layers/<group>/<name>/weight`), its Hugging Face tensor name
(`model.layers.<i>.<hf_module>.<name>.weight`), the logical axes its weight is sharded by, the
key of a PBLoRA adapter tensor (`model.layers.<i>.<hf_module>.<name>.A1`), and its size under a
given config. The HF tensor map (`hf`), the sharding rules (`sharding`), the decoder's layer sizes
(`decoder`), PBLoRA (`adapters`) and plain LoRA (`prosocial_jax.direg.lora`) all read
`PROJECTIONS`, so these names cannot drift apart.
"""

from __future__ import annotations

import dataclasses

from prosocial_jax.models.config import ModelConfig


def axis_size(config: ModelConfig, axis: str) -> int:
    """The size of a projection's logical axis: "heads" and "kv_heads" are flattened
    (heads * head_dim), as the weights store them."""
    sizes = {"embed": config.hidden_size, "mlp": config.intermediate_size,
             "heads": config.num_heads * config.head_dim,
             "kv_heads": config.num_kv_heads * config.head_dim}
    return sizes[axis]


@dataclasses.dataclass(frozen=True)
class Projection:
    """One linear layer of every decoder layer (weights stored [out, in], the HF orientation)."""

    name: str  # module name, the same in our pytree and in HF's ("q_proj")
    group: str  # our parameter group: the pytree path is layers/<group>/<name>
    hf_module: str  # HF's parent module: model.layers.<i>.<hf_module>.<name>
    weight_axes: tuple[str, str]  # logical (out, in) axes of one layer's weight
    bias_flag: str | None = None  # the ModelConfig field that gives it a bias; None: never

    @property
    def param_path(self) -> tuple[str, str, str]:
        """Path of the stacked [L, out, in] weight's module in the parameter pytree."""
        return ("layers", self.group, self.name)

    def hf_prefix(self, layer: int | str) -> str:
        """HF name of the module in one layer (`layer="{i}"` leaves a template)."""
        return f"model.layers.{layer}.{self.hf_module}.{self.name}"

    def shape(self, config: ModelConfig) -> tuple[int, int]:
        """(out, in) of one layer's weight."""
        out_axis, in_axis = self.weight_axes
        return axis_size(config, out_axis), axis_size(config, in_axis)

    def has_bias(self, config: ModelConfig) -> bool:
        return self.bias_flag is not None and bool(getattr(config, self.bias_flag))


# Order matters: it is the order of the tensors in a saved checkpoint.
PROJECTIONS: dict[str, Projection] = {p.name: p for p in (
    Projection("q_proj", "attn", "self_attn", ("heads", "embed"), "qkv_bias"),
    Projection("k_proj", "attn", "self_attn", ("kv_heads", "embed"), "qkv_bias"),
    Projection("v_proj", "attn", "self_attn", ("kv_heads", "embed"), "qkv_bias"),
    Projection("o_proj", "attn", "self_attn", ("embed", "heads"), "o_bias"),
    Projection("gate_proj", "mlp", "mlp", ("mlp", "embed")),
    Projection("up_proj", "mlp", "mlp", ("mlp", "embed")),
    Projection("down_proj", "mlp", "mlp", ("embed", "mlp")),
)}

# Projections some families store fused (Phi-3), by the fused module's name: the parts, in row
# order. Loading splits a fused tensor into its parts, so everything here sees the parts; a
# PBLoRA target or a DiReg pattern may still name the fused module and means all its parts.
FUSED: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


def expand_fused(names) -> tuple[str, ...]:
    """Projection names with each fused module's name replaced by its parts (order kept,
    duplicates dropped)."""
    out: list[str] = []
    for name in names:
        for part in FUSED.get(name, (name,)):
            if part not in out:
                out.append(part)
    return tuple(out)
