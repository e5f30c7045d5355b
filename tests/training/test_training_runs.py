"""Resumable runs, both trainers: resume on a device mesh, exact records, extension, and no
non-finite state ever saved or resumed.

The training data builders come from the trainers' own tests, imported as `direg.test_finetune`
and `pvarm.test_train_arm` (folders under tests/, which is on pytest's pythonpath), so this file
also runs on its own."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import ARM_ADAPTER, SFT_ROWS, synthetic_pairs

import prosocial_jax as pj
from prosocial_jax.data.sft import load_sft
from prosocial_jax.direg.finetune import FinetuneSettings, finetune
from prosocial_jax.pvarm.train import ArmSettings, train_arm
from prosocial_jax.training import checkpoints
from prosocial_jax.training.checkpoints import RunError

ARM = ArmSettings(steps=4, batch_size=8, max_len=32, learning_rate=1e-2, warmup_steps=1,
                  beta=1.0, checkpoint_every=1)


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(folder):
    return [json.loads(line)["step"] for line in
            (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_examples(tiny_chat, tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SFT_ROWS))
    examples, _ = load_sft(path, pj.load_model(tiny_chat.path).tokenizer, max_len=128)
    return examples


def test_pvarm_resume_on_a_mesh_is_exact(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["llama_mesh"].path, mesh="2x4")
    train = synthetic_pairs(3, 32)
    straight, _, _ = train_arm(model, ARM_ADAPTER, train, [], ARM, tmp_path / "a", progress=False)
    train_arm(model, ARM_ADAPTER, train, [], ARM, tmp_path / "b", stop_after=2, progress=False)
    # A new process would load the model again: a fresh Model on a fresh mesh.
    again = pj.load_model(tiny_checkpoints["llama_mesh"].path, mesh="2x4")
    resumed, history, _ = train_arm(again, ARM_ADAPTER, train, [], ARM, tmp_path / "b",
                                    progress=False)
    assert [h["step"] for h in history] == [3, 4]
    _same(straight.params, resumed.params)
    assert _steps(tmp_path / "b") == [1, 2, 3, 4]


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_finetune_resume_on_a_mesh_is_exact(tiny_chat, sft_examples, tmp_path, lora_rank):
    settings = FinetuneSettings(steps=4, batch_size=4, learning_rate=1e-3, warmup_steps=1,
                                checkpoint_every=1, lora_rank=lora_rank)
    model = pj.load_model(tiny_chat.path, mesh="2x4")
    straight, _ = finetune(model, sft_examples, settings, tmp_path / "a", progress=False)
    finetune(model, sft_examples, settings, tmp_path / "b", stop_after=2, progress=False)
    again = pj.load_model(tiny_chat.path, mesh="2x4")
    resumed, history = finetune(again, sft_examples, settings, tmp_path / "b", progress=False)
    assert [h["step"] for h in history] == [3, 4]
    _same(straight.params, resumed.params)


def test_metrics_hold_each_step_once_after_an_interruption(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    train = synthetic_pairs(2, 24)
    settings = dataclasses.replace(ARM, steps=5, checkpoint_every=2)
    # Stopped after step 3: the last checkpoint is step 2, the log already has step 3.
    train_arm(model, ARM_ADAPTER, train, [], settings, tmp_path / "run", stop_after=3,
              progress=False)
    assert _steps(tmp_path / "run") == [1, 2, 3]
    train_arm(model, ARM_ADAPTER, train, [], settings, tmp_path / "run", progress=False)
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5]


def test_run_record_names_what_changed(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    train = synthetic_pairs(2, 24)
    settings = dataclasses.replace(ARM, steps=2)
    train_arm(model, ARM_ADAPTER, train, [], settings, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["dtype"] == "float32" and len(record["train_data"]) == 16
    other = synthetic_pairs(5, 40)[: len(train)]  # as many pairs, different ones
    assert len(other) == len(train)
    with pytest.raises(RunError, match="train_data is '[0-9a-f]{16}' there and '[0-9a-f]{16}'"):
        train_arm(model, ARM_ADAPTER, other, [], settings, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match=r"settings\.learning_rate is 0\.01 there and 0\.02 now"):
        train_arm(model, ARM_ADAPTER, train, [], dataclasses.replace(settings, learning_rate=0.02),
                  tmp_path / "run", progress=False)
    half = pj.load_model(tiny_checkpoints["llama"].path, dtype="bfloat16")
    with pytest.raises(RunError, match="dtype is 'float32' there and 'bfloat16' now"):
        train_arm(half, ARM_ADAPTER, train, [], settings, tmp_path / "run", progress=False)


def test_a_run_can_be_extended_but_not_shortened(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    train = synthetic_pairs(2, 24)
    two = dataclasses.replace(ARM, steps=2)
    train_arm(model, ARM_ADAPTER, train, [], two, tmp_path / "run", progress=False)
    _, history, _ = train_arm(model, ARM_ADAPTER, train, [], dataclasses.replace(two, steps=4),
                              tmp_path / "run", progress=False)
    assert [h["step"] for h in history] == [3, 4]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["settings"]["steps"] == 4
    with pytest.raises(RunError, match="already at step 4, past steps=3"):
        train_arm(model, ARM_ADAPTER, train, [], dataclasses.replace(two, steps=3),
                  tmp_path / "run", progress=False)


def test_damaged_run_record_and_foreign_folder_are_named(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"settings": ')
    with pytest.raises(RunError, match=r"run/run\.json: not valid JSON"):
        checkpoints.check_run_record(tmp_path / "run", {"settings": {}})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("a,b")
    with pytest.raises(RunError, match="not a prosocial-jax training run.*data.csv"):
        checkpoints.check_run_record(tmp_path / "mine", {"settings": {}})
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["data.csv"]


def test_nan_training_stops_before_saving(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    params = jax.tree.map(lambda x: x, model.params)
    params["layers"]["mlp"]["up_proj"]["weight"] = params["layers"]["mlp"]["up_proj"][
        "weight"].at[0, 0, 0].set(jnp.nan)  # a weight gone bad in memory
    broken = dataclasses.replace(model, params=params)
    with pytest.raises(RunError, match=r"step 1: non-finite values .* in parameter\(s\) "
                                       r"\w+/A1.*no checkpoint was saved"):
        train_arm(broken, ARM_ADAPTER, synthetic_pairs(2, 24), [], ARM, tmp_path / "run",
                  progress=False)
    assert ocp.CheckpointManager(tmp_path / "run" / "checkpoints").latest_step() is None


def test_nan_finetune_names_the_parameter(tiny_chat, sft_examples, tmp_path):
    model = pj.load_model(tiny_chat.path)
    settings = FinetuneSettings(steps=3, batch_size=4, learning_rate=1e-3, checkpoint_every=1)
    finetune(model, sft_examples, settings, tmp_path / "run", stop_after=1, progress=False)
    params = jax.tree.map(lambda x: x, model.params)
    params["final_norm"]["scale"] = params["final_norm"]["scale"].at[3].set(jnp.inf)
    with pytest.raises(RunError, match=r"step 1: non-finite .*final_norm/scale.*no checkpoint"):
        finetune(dataclasses.replace(model, params=params), sft_examples, settings,
                 tmp_path / "other", progress=False)


def test_a_checkpoint_with_nan_is_not_resumed(tmp_path):
    state = {"step": jnp.zeros((), jnp.int32), "w": {"kernel": jnp.ones((3,))}}
    manager, _, _ = checkpoints.start_or_resume(tmp_path / "run", {"a": 1}, state, 2, 1, 5)
    manager.save(1, args=ocp.args.StandardSave({**state, "w": {"kernel": jnp.array(
        [1.0, np.nan, 2.0])}}), force=True)
    manager.wait_until_finished()
    with pytest.raises(RunError, match="holds NaN or inf in w/kernel; refusing to resume"):
        checkpoints.start_or_resume(tmp_path / "run", {"a": 1}, state, 2, 1, 5)
