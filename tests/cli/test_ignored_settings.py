"""Settings that cannot take effect are never silent: a flag is an error naming what it needs, a
config key or a prompt row's field a warning (with the row's line number)."""

import json
import re
from pathlib import Path

import pytest
from helpers import random_adapter

import prosocial_jax as pj
from prosocial_jax import cli

ROOT = Path(__file__).parents[2]
QWEN = ROOT / "tests" / "fixtures" / "qwen2_5_7b_instruct_config.json"


def _fails(argv, capsys, *expected: str) -> None:
    """Exit code 2, one error line that holds every `expected` text, and no decoding."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("flags, named", [
    (["--preference", "empathy=1"], "--preference"),
    (["--guidance", "2"], "--guidance"),
    (["--safety-margin", "0.5"], "--safety-margin"),
    (["--plausibility", "0.1"], "--plausibility"),
    (["--no-repeat-ngram", "3"], "--no-repeat-ngram"),
    (["--reward", "bundled:smollm2"], "--reward"),
    (["--reward-layout", "replicated"], "--reward-layout"),
    (["--no-safety-stage"], "--no-safety-stage"),
])
def test_guidance_flags_without_an_adapter_are_errors(flags, named, capsys):
    _fails(["generate", "--model", "bundled:smollm2", "--prompt", "hi", *flags], capsys,
           f"error: {named} has no effect without --adapter")


def test_sampling_flags_at_temperature_zero_and_other_ignored_flags(tmp_path, capsys):
    for flag, value in (("--top-k", "5"), ("--top-p", "0.9"), ("--seed", "3")):
        _fails(["generate", "--model", "bundled:smollm2", "--prompt", "hi", flag, value],
               capsys, f"{flag} has no effect at temperature 0 (greedy)",
               "give --temperature above 0")
    _fails(["generate", "--model", "bundled:smollm2", "--prompt", "hi", "--overwrite"], capsys,
           "--overwrite has no effect without --out")
    _fails(["generate", "--model", "bundled:smollm2", "--prompt", "hi", "--strict"], capsys,
           "--strict has no effect with --prompt")
    _fails(["sweep", "--model", "bundled:smollm2", "--adapter", str(tmp_path), "--prompt", "hi",
            "--fixed", "empathy=0.5", "--out", str(tmp_path / "s.jsonl")], capsys,
           "fixed weights (empathy=0.5) need `over`")
    _fails(["memory", "--model-config", str(QWEN), "--reward-layout", "replicated"], capsys,
           "--reward-layout has no effect without --reward-config")
    _fails(["memory", "--model-config", str(QWEN), "--train", "--reward-config", "same"],
           capsys, "--reward-config has no effect with --train")
    _fails(["prompts", "--benchmark", "harmbench", "--harmful", "2", "--out",
            str(tmp_path / "p.jsonl")], capsys, "--harmful has no effect with --benchmark")
    _fails(["harm-vector", "--base", "a", "--harmful", "b", "--out", str(tmp_path / "e"),
            "--max-new-tokens", "8"], capsys, "--max-new-tokens has no effect without --sweep")
    _fails(["finetune", "--model", "m", "--data", "d.jsonl", "--out", str(tmp_path / "o"),
            "--checkpoint-dir", str(tmp_path / "c"), "--lora-alpha", "8"], capsys,
           "--lora-alpha has no effect in a full fine-tune", "give --lora-rank above 0")
    _fails(["finetune", "--model", "m", "--data", "d.jsonl", "--out", str(tmp_path / "o"),
            "--checkpoint-dir", str(tmp_path / "c"), "--split", "test"], capsys,
           "--split has no effect for local data (d.jsonl)")
    _fails(["train-arm", "--model", "m", "--train-data", "t.jsonl", "--out",
            str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c"), "--extend", "a",
            "--new-attribute", "kindness", "--adapter-r1", "4"], capsys,
           "--adapter-r1 has no effect with --extend")
    _fails(["train-arm", "--model", "m", "--train-data", "t.jsonl", "--out",
            str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c"), "--format",
            "native", "--hh-attribute", "empathy"], capsys,
           "--hh-attribute has no effect with --format native")
    _fails(["ablate-k-scaling", "--model", "m", "--steps", "3", "--out", str(tmp_path / "k")],
           capsys, "--steps has no effect without --train-accuracy")
    _fails(["evaluate", "--generations", "g.jsonl", "--mesh", "2x4", "--out",
            str(tmp_path / "v")], capsys, "--mesh has no effect without a model judge")


def test_a_config_key_that_cannot_take_effect_is_a_warning(tiny_chat, tmp_path, capsys):
    config = tmp_path / "guided.py"
    config.write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.model = {str(tiny_chat.path)!r}\n"
        "    c.guidance = ml_collections.ConfigDict({'guidance': 2.0})\n"
        "    return c\n")
    assert cli.main(["generate", "--config", str(config), "--prompt", "hi",
                     "--max-new-tokens", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert ("warning: config key guidance.guidance has no effect without --adapter; ignored"
            in err)


def test_row_guidance_without_an_adapter_is_a_line_numbered_warning(tiny_chat, tmp_path,
                                                                    capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a"}, {"prompt": "b", "preference": "empathy=1", "guidance": 2},
        {"prompt": "c"}, {"prompt": "d", "safety_margin": 1}]) + "\n")
    assert cli.main(["generate", "--model", str(tiny_chat.path), "--prompts", str(prompts),
                     "--max-new-tokens", "2", "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"{prompts}:2: warning: preference, guidance ignored: no --adapter, so this row is "
        "decoded plainly",
        f"{prompts}:4: warning: safety_margin ignored: no --adapter, so this row is decoded "
        "plainly"]


def test_the_same_flags_with_an_adapter_are_accepted(tiny_chat, tmp_path, capsys):
    model = pj.load_model(tiny_chat.path)
    adapter = pj.save_adapter(random_adapter(model.config), tmp_path / "adapter")
    assert cli.main(["generate", "--model", str(tiny_chat.path), "--prompt", "hi",
                     "--adapter", str(adapter), "--guidance", "2", "--no-safety-stage",
                     "--max-new-tokens", "2", "--quiet", "--out", str(tmp_path / "o.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "has no effect" not in err and "normalised" not in err
    # No --preference: the uniform one (GuidanceSettings), not an error.
    row = json.loads((tmp_path / "o.jsonl").read_text())
    k = len(row["preference"])
    assert row["preference"] == pytest.approx(dict.fromkeys(row["preference"], 1 / k))
    assert row["guidance"] == 2.0


def test_memory_names_its_dtype_and_takes_dtype(capsys):
    assert cli.main(["memory", "--model-config", str(QWEN), "--mesh", "1x1", "--batch", "1",
                     "--max-len", "16"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dtype"] == "bfloat16"
    assert "in bfloat16 (the config's torch_dtype)" in captured.err
    bf16 = json.loads(captured.out)["param_bytes_total"]
    assert cli.main(["memory", "--model-config", str(QWEN), "--mesh", "1x1", "--batch", "1",
                     "--max-len", "16", "--dtype", "float32"]) == 0
    captured = capsys.readouterr()
    assert "in float32 (--dtype)" in captured.err
    report = json.loads(captured.out)
    # Qwen2.5-7B: 7.62e9 parameters (its model card), 4 bytes each in float32.
    assert report["param_bytes_total"] == 2 * bf16 == 4 * report["num_parameters"]
    assert abs(report["num_parameters"] / 7.62e9 - 1) < 0.01
    gib = float(re.search(r"params (\d+\.\d+)", captured.err).group(1))
    assert gib == pytest.approx(4 * 7.62e9 / 1024**3, rel=0.01)


def test_help_gives_the_pipeline_in_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    epilog = out[out.index("the pipeline in commands"):]
    order = ["harmful-data", "finetune", "harm-vector", "preference-set", "train-arm",
             "generate", "--adapter", "evaluate", "compare"]
    positions = [epilog.index(word) for word in order]
    assert positions == sorted(positions)
