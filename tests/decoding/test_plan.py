"""Memory plans of real-size models from their real config.json files (no weights): the shipped
configs fit their platforms, and each plan's per-device bytes equal what XLA itself accounts for
when it compiles the sharded step from shapes alone on 8 CPU devices."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from prosocial_jax import cli
from prosocial_jax.cli import options
from prosocial_jax.decoding.plan import guided_decoding_plan
from prosocial_jax.models import sharding
from prosocial_jax.models.adapters import AdapterConfig
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.pvarm.plan import arm_training_plan
from prosocial_jax.pvarm.train import ArmSettings

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "configs"
# The hub ids of the real-size configs -> those checkpoints' own config.json.
CONFIG_JSON = {
    "hf://meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b.json",
    "hf://meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b-instruct__save_pretrained-5.25.0.json",
    "hf://Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b.json",
    "hf://Qwen/Qwen2.5-0.5B-Instruct": "qwen2.5-0.5b-instruct__save_pretrained-5.25.0.json",
    "hf://mistralai/Mistral-7B-Instruct-v0.3": "mistral-7b-instruct-v0.3.json",
    "hf://google/gemma-7b-it": "gemma-7b__save_pretrained-5.25.0.json",
    "hf://google/gemma-2b-it": "gemma-2b-it.json",
}
REAL_SIZE = ("llama3_8b", "qwen2_7b", "mistral_7b", "gemma_7b")


def _settings(name: str, platform: str):
    """The generate command's settings from configs/NAME.py:PLATFORM, as the CLI reads them."""
    parser, commands = cli.build_parser()
    return options.parse(parser, commands, ["generate", "--config",
                                            str(ROOT / "configs" / f"{name}.py:{platform}"),
                                            "--prompt", "hi", "--config.adapter=adapter"]).settings


def _config(hub_id: str | None) -> ModelConfig | None:
    return None if hub_id is None else ModelConfig.from_json_file(FIXTURES / CONFIG_JSON[hub_id])


@pytest.mark.parametrize("name", REAL_SIZE)
def test_real_size_configs_fit_their_platforms(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(module.PLATFORMS) == sorted(sharding.PLATFORMS)
    for platform, (devices, memory_gib) in sharding.PLATFORMS.items():
        settings = _settings(name, platform)
        base, reward = _config(settings.inputs.model), _config(settings.adapter.reward)
        data, model = sharding.parse_mesh_shape(settings.inputs.mesh)
        assert data * model == devices
        assert settings.inputs.dtype == "bfloat16" and settings.adapter.adapter == "adapter"
        if reward is not None:
            assert reward.num_parameters() < base.num_parameters() / 3  # a small Pv-Arm
            assert abs(reward.vocab_size - base.vocab_size) < 1024  # one tokenizer (padding)
        plan = guided_decoding_plan(base, reward, AdapterConfig(), settings.inputs.mesh,
                                    settings.generate.batch_size, 4096,
                                    reward_layout=settings.adapter.reward_layout)
        # Room for the step's temporaries (logits, attention) and the runtime's own buffers.
        assert plan["total_bytes_per_device"] < 0.8 * memory_gib * 2**30, (platform, plan)
        assert f"{platform:6s} mesh {settings.inputs.mesh}" in module.__doc__


@pytest.mark.parametrize("name, platform", [("llama3_8b", "v5e-8"), ("qwen2_7b", "v4-16"),
                                            ("mistral_7b", "h100"), ("gemma_7b", "v4-16")])
def test_guided_step_compiles_from_shapes_and_xla_agrees(name, platform):
    """XLA compiles one guided decode step of the real-size pair on the config's mesh from
    ShapeDtypeStructs alone, and its per-device argument bytes are the plan's. float32: XLA:CPU
    computes bfloat16 matmuls in float32 and would count those copies as temporaries."""
    settings = _settings(name, platform)
    base, reward = _config(settings.inputs.model), _config(settings.adapter.reward)
    mesh = sharding.make_mesh(settings.inputs.mesh)
    plan = guided_decoding_plan(base, reward, AdapterConfig(), mesh, 8, 1024,
                                dtype=jnp.float32, reward_layout=settings.adapter.reward_layout,
                                compile=True)
    xla, planned = plan["xla"], plan["total_bytes_per_device"]
    if reward is None:  # the same weights passed twice: XLA counts each argument
        planned += plan["bytes_per_device"]["base"]
    assert abs(xla["argument"] - planned) < 2**20, plan  # the settings rows: a few KiB
    assert xla["alias"] >= plan["bytes_per_device"]["base_cache"]  # the caches update in place
    assert xla["temp"] < 0.1 * xla["argument"], plan


def test_arm_training_plan_matches_xla():
    backbone = _config("hf://Qwen/Qwen2.5-0.5B-Instruct")
    settings = ArmSettings(batch_size=8, max_len=128)
    plan = arm_training_plan(backbone, AdapterConfig(), settings, sharding.make_mesh("2x4"),
                             dtype=jnp.float32, compile=True)
    assert abs(plan["xla"]["argument"] - plan["total_bytes_per_device"]) < 1024  # up to scalars
    adapter = plan["bytes_per_device"]["adapter"]
    assert plan["bytes_per_device"]["optimizer_state"] >= 2 * adapter  # Adam's two moments
    assert plan["xla"]["temp"] > 0


def test_memory_command_plans_guided_decoding_and_training(capsys):
    base = FIXTURES / CONFIG_JSON["hf://meta-llama/Llama-3.1-8B-Instruct"]
    small = FIXTURES / CONFIG_JSON["hf://meta-llama/Llama-3.2-1B-Instruct"]
    assert cli.main(["memory", "--model-config", str(base), "--reward-config", str(small),
                     "--reward-layout", "replicated", "--mesh", "2x4", "--batch", "32",
                     "--max-len", "4096", "--device-memory", "32"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    gib = 2**30
    # By hand: the 8B base's 16.06 GB of bfloat16 weights over the 4-way "model" axis (its
    # 128,256 x 4,096 embedding and head, and every projection, split 4 ways) and the 1B
    # backbone's 2.47 GB whole on each device.
    assert report["bytes_per_device"]["base"] / gib == pytest.approx(3.74, abs=0.01)
    assert report["bytes_per_device"]["reward"] / gib == pytest.approx(2.30, abs=0.01)
    # KV caches: 32 layers x 32 rows x 4096 slots x 8 heads x 128 x (k, v) x 2 bytes, rows over
    # 2, heads over 4; the backbone's: 16 layers x 64 rows (prosocial + safety) x 8 x 64, heads
    # whole.
    assert report["bytes_per_device"]["base_cache"] == pytest.approx(
        32 * 32 * 4096 * 8 * 128 * 2 * 2 / 8, rel=1e-3)
    assert report["bytes_per_device"]["reward_cache"] == pytest.approx(
        16 * 64 * 4096 * 8 * 64 * 2 * 2 / 2, rel=1e-3)
    assert "fits in 32 GiB" in out.err
    assert cli.main(["memory", "--model-config", str(small), "--train", "--mesh", "1x8",
                     "--batch", "8", "--max-len", "512", "--device-memory", "0.1"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["pairs"] == 8 and "does NOT fit in 0.1 GiB" in out.err
    assert jax.device_count() == 8
