"""The projection table against everything that reads it: the decoder's parameters, the HF
tensor names, the sharding rules and the PBLoRA factor shapes agree for every projection."""

import dataclasses
from pathlib import Path

import chex
import pytest

from prosocial_jax.models import adapters, hf, sharding
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import init_params_shapes
from prosocial_jax.models.projections import PROJECTIONS

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize("biases", [(False, False), (True, False), (True, True)])
def test_every_projection_is_described_consistently(biases):
    base = ModelConfig.from_json_file(FIXTURES / "qwen2_5_7b_instruct_config.json")
    config = dataclasses.replace(base, num_layers=2, qkv_bias=biases[0], o_bias=biases[1])
    params = init_params_shapes(config)
    axes = sharding.param_logical_axes(params)
    hf_paths = {spec.hf_name: spec.path for spec in hf.tensor_specs(config)}
    adapter_config = adapters.AdapterConfig(target_modules=tuple(PROJECTIONS))
    for name, proj in PROJECTIONS.items():
        group = params["layers"][proj.group]
        assert name in group  # the decoder builds a module of this name
        chex.assert_shape(group[name]["weight"], (config.num_layers, *proj.shape(config)))
        assert axes["layers"][proj.group][name]["weight"] == ("layers", *proj.weight_axes)
        hf_name = f"model.layers.{{i}}.{proj.hf_module}.{name}.weight"
        assert hf_paths[hf_name] == ("layers", proj.group, name, "weight")
        assert ("bias" in group[name]) == proj.has_bias(config)
        if proj.has_bias(config):
            chex.assert_shape(group[name]["bias"], (config.num_layers, proj.shape(config)[0]))
            assert axes["layers"][proj.group][name]["bias"] == ("layers", proj.weight_axes[0])
            assert hf_paths[hf_name[:-len("weight")] + "bias"][-1] == "bias"
        out_features, in_features = proj.shape(config)
        shapes = adapters.factor_shapes(config, adapter_config, name)
        assert shapes["A1"][1] == shapes["A2"][1] == in_features
        assert shapes["B1"][0] == shapes["B2"][0] == out_features
        assert adapters._tensor_name(name, 3, "A1") == \
            f"model.layers.3.{proj.hf_module}.{name}.A1"
