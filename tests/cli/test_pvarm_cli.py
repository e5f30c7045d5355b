"""Rule-based scorers, the demo preference set and the train-arm command on tiny models."""

import json

import numpy as np

import prosocial_jax as pj
from prosocial_jax import cli
from prosocial_jax.evaluation import scorers


def test_scorers_reward_what_they_say():
    assert scorers.harmlessness("harmful", "I'm sorry, I cannot help with that.") == 1.0
    assert scorers.harmlessness("harmful", "Sure, step one is...") == 0.0
    assert scorers.harmlessness("benign", "anything") is None
    warm = "I'm so sorry to hear that. It sounds like a hard day; it's okay to feel this way."
    assert scorers.empathy("prosocial", warm) > scorers.empathy("prosocial", "Buy a new one.")
    assert scorers.non_judgmental("benign", "That was irresponsible and stupid.") < \
        scorers.non_judgmental("benign", "That happens; here is what can help.")
    assert scorers.truthfulness("benign", "It depends; research suggests it may help.") > \
        scorers.truthfulness("benign", "It will definitely, absolutely work.")
    assert scorers.helpfulness("benign", "I cannot help.") == 0.0


def test_preference_set_and_train_arm_commands(tiny_chat, tmp_path, capsys):
    prefs = tmp_path / "prefs"
    assert cli.main(["preference-set", "--model", str(tiny_chat.path), "--out", str(prefs),
                     "--max-new-tokens", "8", "--harmful-limit", "4", "--benign-limit", "4",
                     "--prosocial-limit", "8", "--answers-per-side", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(summary["prompts"].values()) == 4 + 4 + 8
    # 2 answers per harmful prompt, 12 per answered non-harmful one (5 embodying and 6 violating
    # personas and the ideal answer; 28% of each kind are test prompts: 1 of 4 benign, 2 of 8).
    assert summary["prompts"]["test"] == 1 + 2
    assert summary["generations"] == 2 * 4 + 12 * (4 + 8 - 3)
    rows = [json.loads(line) for line in (prefs / "train.jsonl").read_text().splitlines()]
    assert rows and {"prompt", "response_a", "response_b", "winners", "personas"} <= set(rows[0])
    harmful = [r for r in rows if r["kind"] == "harmful"]
    assert harmful and all(r["winners"]["empathy"] is None for r in harmful)

    out = tmp_path / "adapter"
    args = ["train-arm", "--model", str(tiny_chat.path), "--train-data",
            str(prefs / "train.jsonl"), "--out", str(out), "--checkpoint-dir",
            str(tmp_path / "ckpt"), "--steps", "3", "--batch-size", "4", "--max-len", "96",
            "--adapter-r1", "2", "--adapter-r2", "2", "--adapter-attributes",
            "harmlessness,empathy,sensitivity,non_judgmental,truthfulness", "--pcgrad", "false"]
    assert cli.main(args) == 0
    table = capsys.readouterr().out
    assert "| backbone (no adapter) |" in table and "| uniform |" in table
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["settings"]["pcgrad"] is False and len(evaluation["grid"]) == 6
    assert (out / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    adapter = pj.load_adapter(out, pj.load_model(tiny_chat.path).config)
    assert adapter.config.r1 == 2 and adapter.config.safety_attribute == "harmlessness"
    assert np.abs(np.asarray(adapter.params["q_proj"]["B1"])).max() > 0  # trained from B1 = 0
    before = (out / "adapter.safetensors").read_bytes()
    # Rerun into the same --out: refused without --overwrite, before any work.
    assert cli.main(args) == 2
    assert "holds a previous adapter output; pass --overwrite" in capsys.readouterr().err
    # The same checkpoint folder and different settings: refused, naming the field.
    assert cli.main([*args[:-1], "true", "--overwrite"]) == 2
    assert "settings.pcgrad is False there and True now" in capsys.readouterr().err
    assert (out / "adapter.safetensors").read_bytes() == before
    # ... or, asked to, that run is discarded and the new one starts at step 0 (its metrics
    # hold only its own 3 steps, not the old run's too).
    ckpt = tmp_path / "ckpt"
    assert cli.main([*args[:-1], "true", "--overwrite", "--restart-on-change"]) == 0
    assert "discarding that run and starting afresh" in capsys.readouterr().err
    assert json.loads((ckpt / "run.json").read_text())["settings"]["pcgrad"] is True
    steps = [json.loads(line)["step"] for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], steps
    assert (out / "adapter.safetensors").read_bytes() != before
    # The same settings again: nothing changed, so the run is resumed (already at its end).
    assert cli.main([*args[:-1], "true", "--overwrite", "--restart-on-change"]) == 0
    assert "discarding" not in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], steps

    # A value added to the trained adapter (five attributes): helpfulness on its own.
    five = out
    common = ["--model", str(tiny_chat.path), "--train-data", str(prefs / "train.jsonl"),
              "--steps", "2", "--batch-size", "4", "--max-len", "96"]
    six = tmp_path / "six"
    assert cli.main(["train-arm", *common, "--out", str(six), "--checkpoint-dir",
                     str(tmp_path / "ckpt6"), "--extend", str(five),
                     "--new-attribute", "helpfulness", "--learning-rate", "0.1"]) == 0
    captured = capsys.readouterr()
    assert "extending" in captured.err and "| before training (uniform) |" in captured.out
    config = pj.load_model(tiny_chat.path).config
    old, new = pj.load_adapter(five, config), pj.load_adapter(six, config)
    assert new.config.attributes == (*old.config.attributes, "helpfulness")
    assert new.config.r1 == 2
    for target, factors in new.params.items():
        for name, value in factors.items():
            kept = value[:, :5] if name == "zeta" else value
            np.testing.assert_array_equal(np.asarray(kept), np.asarray(old.params[target][name]))
    assert cli.main(["train-arm", *common, "--out", str(tmp_path / "x"), "--checkpoint-dir",
                     str(tmp_path / "ckpt7"), "--extend", str(five)]) == 2
    assert "--extend and --new-attribute go together" in capsys.readouterr().err


def test_train_arm_rejects_unknown_config_keys(tmp_path, capsys):
    config = tmp_path / "bad.py"
    config.write_text("import ml_collections\n"
                      "def get_config():\n"
                      "    c = ml_collections.ConfigDict()\n"
                      "    c.arm = ml_collections.ConfigDict({'stepz': 3})\n"
                      "    return c\n")
    assert cli.main(["train-arm", "--config", str(config)]) == 2
    assert "config key(s) ['arm.stepz'] are not train-arm settings" in capsys.readouterr().err
