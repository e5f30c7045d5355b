"""The prosocial-jax command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prosocial_jax import cli

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("command", [[], ["generate"], ["prompts"], ["memory"], ["harmful-data"],
                                     ["finetune"], ["harm-vector"], ["preference-set"],
                                     ["train-arm"], ["compare"]])
def test_help_on_every_command(command):
    out = subprocess.run([sys.executable, "-m", "prosocial_jax.cli", *command, "--help"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("usage: prosocial-jax")


def test_generate_skips_malformed_rows_and_reports_line_numbers(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([
        json.dumps({"prompt": "What is the capital of France?", "id": "a"}),
        "{this is not json",
        json.dumps({"text": "no prompt field"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "Say hi."}], "id": "b"}),
        json.dumps({"prompt": "x", "messages": []}),
        json.dumps({"messages": [{"role": "user"}]}),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    code = cli.main(["generate", "--model", "bundled:smollm2", "--prompts", str(prompts),
                     "--out", str(out), "--max-new-tokens", "6", "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"{prompts}:2: skipped: not valid JSON" in err
    assert f'{prompts}:3: skipped: expected exactly one of "prompt" or "messages"' in err
    assert f'{prompts}:6: skipped: expected exactly one of "prompt" or "messages"' in err
    assert f'{prompts}:7: skipped: "messages"[0] must be an object' in err
    assert "skipped 4 malformed row(s)" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["line"]) for r in rows] == [("a", 1), ("b", 5)]
    for row in rows:
        assert set(row) >= {"prompt", "response", "tokens", "prompt_tokens", "completion_tokens",
                            "finish_reason"}
        assert len(row["tokens"]) == row["completion_tokens"] <= 6
        assert row["finish_reason"] in ("stop", "length")
    assert rows[1]["prompt"] == [{"role": "user", "content": "Say hi."}]

    strict = cli.main(["generate", "--model", "bundled:smollm2", "--prompts", str(prompts),
                       "--strict", "--quiet"])
    assert strict == 2


def test_generate_from_config_with_overrides(capsys):
    code = cli.main(["generate", "--config", str(ROOT / "configs" / "smollm2.py"),
                     "--config.generate.max_new_tokens=5", "--prompt", "Name a colour."])
    assert code == 0
    captured = capsys.readouterr()
    assert "=== prompt: Name a colour." in captured.out
    assert "(5 tokens, length)" in captured.out or "stop)" in captured.out
    with pytest.raises(SystemExit, match="max_new_tokns"):
        cli.main(["generate", "--config", str(ROOT / "configs" / "smollm2.py"),
                  "--config.generate.max_new_tokns=5", "--prompt", "x"])


def test_generate_errors_are_clear(tmp_path, capsys):
    assert cli.main(["generate", "--prompt", "x"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert cli.main(["generate", "--model", "bundled:smollm2",
                     "--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "no such prompt file" in capsys.readouterr().err
    assert cli.main(["generate", "--model", "bundled:smollm2", "--prompt", "x",
                     "--prefill-chunk", "0"]) == 2
    assert "prefill_chunk must be >= 1, got 0" in capsys.readouterr().err
    assert cli.main(["generate", "--model", "bundled:smollm2", "--prompt", "x",
                     "--layer-layout", "scan"]) == 2
    assert ("layer_layout must be one of auto, stacked, per_layer, packed, got 'scan'"
            in capsys.readouterr().err)


def test_generate_layer_layout_and_prefill_chunk_flags_keep_the_tokens(tiny_chat, tmp_path,
                                                                        monkeypatch):
    """The flags reach `generate`, and the scanned stacked layers with a prompt prefilled 32
    tokens at a time give the default's tokens (per-layer buffers, one pass)."""
    import prosocial_jax as pj

    calls = []
    generate = pj.generate
    monkeypatch.setattr(pj, "generate", lambda *a, **kw: calls.append(kw) or generate(*a, **kw))
    prompt = "Tell me, in a few words, why the sky looks blue on a clear day. " * 3
    tokens = {}
    for name, flags in {"default": [],
                        "stacked, chunks of 32": ["--layer-layout", "stacked",
                                                  "--prefill-chunk", "32"]}.items():
        out = tmp_path / f"{len(tokens)}.jsonl"
        assert cli.main(["generate", "--model", str(tiny_chat.path), "--prompt", prompt,
                         "--max-new-tokens", "8", "--out", str(out), "--quiet", *flags]) == 0
        row = json.loads(out.read_text())
        assert row["prompt_tokens"] > 64  # so that 32-token chunks make three or more passes
        tokens[name] = row["tokens"]
    assert [(kw["layer_layout"], kw["prefill_chunk"]) for kw in calls] == [
        ("auto", None), ("stacked", 32)]
    assert tokens["stacked, chunks of 32"] == tokens["default"]


def test_prompts_command_writes_bundled_sets(tmp_path):
    out = tmp_path / "demo.jsonl"
    assert cli.main(["prompts", "--out", str(out), "--harmful", "2", "--benign", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["benign"] * 3 + ["harmful"] * 2
    assert rows[3]["source"].startswith("harmbench-val:")


def test_memory_command(capsys):
    assert cli.main(["memory", "--model-config",
                     str(ROOT / "tests" / "fixtures" / "qwen2_5_7b_instruct_config.json"),
                     "--mesh", "2x4", "--batch", "4", "--max-len", "2048"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mesh"] == "2x4" and report["param_bytes_per_device"] > 0


@pytest.mark.parametrize("script", sorted((ROOT / "launch").glob("*.sh")))
def test_launch_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_every_command_with_settings_reads_its_config(tmp_path, capsys):
    """harm-vector, compare, harmful-data and preference-set once ignored --config; each now
    reads its own section (checked before any model is loaded) and rejects other keys."""
    config = tmp_path / "config.py"
    config.write_text("import ml_collections\n\ndef get_config():\n"
                      "    return ml_collections.ConfigDict({'base': 'b', 'harmful': 'h', "
                      "'edit': {'top_k': (0.1, 0.2)}})\n")
    assert cli.main(["harm-vector", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "--top-k and --scale take one value each" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text("import ml_collections\n\ndef get_config():\n"
                   "    return ml_collections.ConfigDict({'compare': {'guidnce': 2.0}})\n")
    assert cli.main(["compare", "--config", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "['compare.guidnce'] are not compare settings" in capsys.readouterr().err
    for command in ("harmful-data", "preference-set"):
        assert cli.main([command, "--config", str(bad)]) == 2
        assert f"are not {command} settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no settings, no --config
        cli.main(["prompts", "--config", str(bad), "--out", str(tmp_path / "p.jsonl")])
    with pytest.raises(SystemExit):  # --distributed only where it initialises
        cli.main(["compare", "--distributed", "--out", str(tmp_path / "c")])


@pytest.mark.parametrize("config, command", [
    ("ablation_add_value_smollm2.py", "ablate-add-value"),
    ("ablation_conflict_smollm2.py", "ablate-conflict"),
    ("ablation_overhead_smollm2.py", "ablate-overhead"),
    ("ablation_multi_turn_smollm2.py", "ablate-multi-turn"),
    ("demo_smollm2.py", "ablate-stages")])
def test_ablation_config_files_parse_for_their_commands(config, command, tmp_path):
    """What each make target runs reads its config file without an unknown key (checked
    before any model is loaded), and the values the README describes arrive."""
    parser, commands = cli.build_parser()
    args = cli.options.parse(parser, commands, [command, "--config", str(ROOT / "configs" / config),
                                                "--out", str(tmp_path / "out")])
    settings = args.settings
    if command == "ablate-conflict":
        assert settings.ablation.step == 0.5 and settings.arm.eval_limit == 128
        assert settings.ablation.sum_adapter.endswith("adapter-nopcgrad")
        assert settings.sweep_prompts.prompts_from.endswith("test_prompts.jsonl")
    if command == "ablate-overhead":
        assert settings.ablation.batches == (1, 16) and settings.ablation.contexts == (256, 2048)
        assert settings.inputs.dtype == "float32"
    if command == "ablate-multi-turn":
        assert (settings.ablation.harmful, settings.ablation.benign) == (30, 14)
        assert settings.ablation.safety_margin == 0.1
