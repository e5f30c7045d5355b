"""The ablation commands end to end on a tiny model, with short settings."""

import json

import numpy as np
import pytest
from helpers import random_adapter

import prosocial_jax as pj
from prosocial_jax import cli
from prosocial_jax.models import adapters


def _pairs(path, count, seed):
    """Native preference rows: harmlessness, empathy and helpfulness each decided by a word."""
    rng = np.random.default_rng(seed)
    words = {"harmlessness": ("safely", "dangerously"), "empathy": ("gently", "coldly"),
             "helpfulness": ("clearly", "vaguely")}
    rows = []
    for i in range(count):
        a, b, winners = [f"Answer {i}:"], [f"Answer {i}:"], {}
        for attribute, (good, bad) in words.items():
            if rng.random() < 0.7:
                first = rng.random() < 0.5
                a.append(good if first else bad)
                b.append(bad if first else good)
                winners[attribute] = "a" if first else "b"
            else:
                winners[attribute] = None
        if not any(winners.values()):
            continue
        rows.append({"prompt": f"Question {i}?", "response_a": " ".join(a),
                     "response_b": " ".join(b), "winners": winners})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_add_value_command_trains_extends_and_retrains(tiny_chat, tmp_path, capsys):
    _pairs(tmp_path / "train.jsonl", 40, 0)
    _pairs(tmp_path / "dev.jsonl", 16, 1)
    out = tmp_path / "report"
    args = ["ablate-add-value", "--model", str(tiny_chat.path), "--train-data",
            str(tmp_path / "train.jsonl"), "--dev-data", str(tmp_path / "dev.jsonl"),
            "--steps", "3", "--batch-size", "4", "--max-len", "48", "--adapter-r1", "2",
            "--adapter-r2", "2", "--adapter-attributes", "harmlessness,empathy,helpfulness",
            "--new-attribute", "helpfulness", "--extend-learning-rate", "0.05",
            "--eval-limit", "10", "--out", str(out)]
    assert cli.main(args) == 0
    table = capsys.readouterr().out
    assert "| extended |" in table and "helpfulness (new)" in table
    record = json.loads((out / "results.json").read_text())
    without, extended, retrained = (record["adapters"][k] for k in
                                    ("without", "extended", "retrained"))
    assert without["attributes"] == ["harmlessness", "empathy"]
    assert extended["attributes"] == ["harmlessness", "empathy", "helpfulness"]
    # The extended adapter's old attributes are the adapter it extends, exactly, on the same
    # sample of 10 held-out pairs (a sample drawn after encoding for two attributes would
    # differ: pairs labelled only for helpfulness drop out there).
    for attribute in ("harmlessness", "empathy"):
        assert extended["accuracy"][attribute] == without["accuracy"][attribute]
        assert (extended["labelled_dev_pairs"][attribute]
                == without["labelled_dev_pairs"][attribute])
    assert record["dev_pairs"] == 10
    config = pj.load_model(tiny_chat.path).config
    assert extended["trained_parameters"] == config.num_layers * 3 * 2 * 2  # q/k/v x r2^2
    assert retrained["trained_parameters"] > 10 * extended["trained_parameters"]
    # Only the pairs labelled for the new value train it.
    labelled = sum(json.loads(line)["winners"]["helpfulness"] is not None
                   for line in (tmp_path / "train.jsonl").read_text().splitlines())
    assert extended["train_pairs"] == labelled
    assert record["extend_learning_rate"] == 0.05
    assert (out / "add_value.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(args) == 2  # an existing report is kept unless --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main([*args[:-4], "--new-attribute", "curiosity", "--out",
                     str(tmp_path / "other")]) == 2
    assert "'curiosity' is not one of the adapter's attributes" in capsys.readouterr().err


def test_k_scaling_command_measures_every_k(tiny_chat, tmp_path, capsys):
    _pairs(tmp_path / "train.jsonl", 24, 0)
    _pairs(tmp_path / "dev.jsonl", 12, 1)
    out = tmp_path / "k"
    assert cli.main(["ablate-k-scaling", "--model", str(tiny_chat.path), "--ks", "7",
                     "--pairs", "2", "--length", "16", "--repeats", "1", "--decode-rows", "2",
                     "--decode-tokens", "4", "--adapter-r1", "2", "--adapter-r2", "3",
                     "--train-accuracy", "true", "--train-data", str(tmp_path / "train.jsonl"),
                     "--dev-data", str(tmp_path / "dev.jsonl"), "--steps", "2",
                     "--batch-size", "4", "--max-len", "48", "--out", str(out)]) == 0
    assert "| 7 |" in capsys.readouterr().out
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["attributes"] == ["harmlessness", "empathy", "sensitivity", "non_judgmental",
                                 "truthfulness", "helpfulness", "extra_7"]
    # q/k/v factors per layer, float32: A1 [r1, D], A2 [r2, D], B1 [out, r1], B2 [out, r2],
    # W [r1, r1], zeta [K, r2^2].
    c = pj.load_model(tiny_chat.path).config
    outs = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim)
    per_layer = sum(2 * c.hidden_size + 3 * c.hidden_size + o * 2 + o * 3 + 4 + 7 * 9
                    for o in outs)
    assert row["adapter_bytes"] == c.num_layers * per_layer * 4
    # Accuracy only for the attributes the pairs label.
    assert set(row["accuracy"]) == {"harmlessness", "empathy", "helpfulness"}
    # Timings are reported, not judged: on a model this small the decode step is a difference
    # of two noisy spans and can come out below zero (CI once measured -0.25 ms).
    timings = ("train_step_one_backward_s", "train_step_k_backwards_s", "decode_step_s")
    assert all(np.isfinite(row[key]) for key in timings)
    assert (out / "k_scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_stages_command_judges_every_stage(tiny_chat, tmp_path, capsys):
    model = pj.load_model(tiny_chat.path)
    adapter = random_adapter(model.config)
    adapter_dir = pj.save_adapter(adapter, tmp_path / "adapter")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "I lost my job today.", "kind": "prosocial"},
        {"prompt": "How do I build a birdhouse?", "kind": "benign"}]))
    out = tmp_path / "stages"
    assert cli.main(["ablate-stages", "--base", str(tiny_chat.path), "--direg",
                     str(tiny_chat.path), "--adapter", str(adapter_dir), "--benign-from",
                     str(dev), "--harmful-limit", "2", "--max-new-tokens", "5",
                     "--safety-margin", "0.5", "--no-repeat-ngram", "2", "--out",
                     str(out)]) == 0
    assert "| all three + no-repeat |" in capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    assert record["stages"] == ["base", "DiReg", "Pv-Arm", "Pv-Arm + safety", "all three",
                                "all three + no-repeat"]
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 6 * 4
    for stage in record["stages"]:
        rows = [r for r in scored if r["setting"] == stage]
        metrics = record["metrics"][stage]
        # The oracle: the rule judge's flags of this stage's answers, counted here.
        harmful = [r["unsafe"] for r in rows if r["kind"] == "harmful"]
        benign = [r["refused"] for r in rows if r["subset"] == "benign"]
        assert len(benign) == 1
        assert metrics["leakage"] == sum(harmful) / 2
        assert metrics["over_refusal"] == sum(benign) / len(benign)
        assert metrics["degenerate"] == sum(r["degenerate"] for r in rows) / 4
    texts = {stage: [r["response"] for r in scored if r["setting"] == stage]
             for stage in record["stages"]}
    assert texts["base"] == texts["DiReg"]  # the same weights: the same greedy text
    # Each guided stage is what it says: the Pv-Arm stage decodes without the safety stage
    # and without the no-repeat rule, under the uniform preference.
    prompts = [r["prompt"] for r in scored if r["setting"] == "Pv-Arm"]
    direct = pj.generate(model, prompts, max_new_tokens=5, adapter=adapter,
                         preference=np.ones(adapter.config.num_attributes), safety_stage=False)
    assert texts["Pv-Arm"] == [g.text for g in direct]
    with_rule = pj.generate(model, prompts, max_new_tokens=5, adapter=adapter,
                            preference=np.ones(adapter.config.num_attributes),
                            safety_margin=0.5, no_repeat_ngram=2)
    assert texts["all three + no-repeat"] == [g.text for g in with_rule]
    assert (out / "stages.png").read_bytes()[:4] == b"\x89PNG"


def test_overhead_command_times_and_judges_every_method(tiny_chat, tmp_path, capsys):
    model = pj.load_model(tiny_chat.path)
    adapter_dir = pj.save_adapter(random_adapter(model.config), tmp_path / "adapter")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "I lost my job today.", "kind": "prosocial"},
        {"prompt": "How do I build a birdhouse?", "kind": "benign"}]))
    out = tmp_path / "overhead"
    common = ["ablate-overhead", "--model", str(tiny_chat.path), "--adapter", str(adapter_dir),
              "--batches", "2", "--contexts", "8", "--new-tokens", "3"]
    assert cli.main([*common, "--methods", "plain,Pv-Arm + safety,multi-ARM,best-of-2",
                     "--isolate", "false", "--harmful-limit", "2", "--benign-from", str(dev),
                     "--max-new-tokens", "4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| best-of-2 |" in captured.out
    record = json.loads((out / "results.json").read_text())
    # Every cell is printed as it is measured (a grid stopped part-way keeps its cells).
    printed = [json.loads(line.split("overhead cell: ", 1)[1])
               for line in captured.err.splitlines() if line.startswith("overhead cell: ")]
    assert printed == record["timing"]
    assert f"overhead quality: {json.dumps(record['quality'])}" in captured.err
    assert [(r["method"], r["batch"], r["context"]) for r in record["timing"]] == [
        (m, 2, 8) for m in ("plain", "Pv-Arm + safety", "multi-ARM", "best-of-2")]
    assert all(r["peak_memory_bytes"] is None for r in record["timing"])  # not isolated
    # Untrained multi-ARM members are timed, not judged.
    assert record["trained_arms"] is False
    assert list(record["quality"]) == ["plain", "Pv-Arm + safety", "best-of-2"]
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    plain = [r for r in scored if r["setting"] == "plain"]
    expected = pj.generate(model, [r["prompt"] for r in plain], max_new_tokens=4)
    assert [r["response"] for r in plain] == [g.text for g in expected]
    for method, quality in record["quality"].items():
        rows = [r for r in scored if r["setting"] == method]
        assert quality["leakage"] == sum(r["unsafe"] for r in rows if r["kind"] == "harmful") / 2
    assert (out / "overhead.png").read_bytes()[:4] == b"\x89PNG"
    # Isolated: the cell runs in a fresh process, whose peak memory holds at least the weights.
    isolated = tmp_path / "isolated"
    assert cli.main([*common, "--methods", "plain", "--quality", "false", "--out",
                     str(isolated)]) == 0
    (cell,) = json.loads((isolated / "results.json").read_text())["timing"]
    assert cell["peak_memory_bytes"] > record["weight_bytes"]


def test_conflict_command_trains_three_ways_and_sweeps_each(tiny_chat, tmp_path, capsys):
    _pairs(tmp_path / "train.jsonl", 24, 0)
    _pairs(tmp_path / "dev.jsonl", 12, 1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "I lost my job today.", "kind": "prosocial"},
        {"prompt": "How do I build a birdhouse?", "kind": "benign"}]))
    out = tmp_path / "conflict"
    assert cli.main(["ablate-conflict", "--model", str(tiny_chat.path), "--train-data",
                     str(tmp_path / "train.jsonl"), "--dev-data", str(tmp_path / "dev.jsonl"),
                     "--steps", "2", "--batch-size", "4", "--max-len", "48", "--adapter-r1",
                     "2", "--adapter-r2", "2", "--adapter-attributes", "harmlessness,empathy",
                     "--prompts-from", str(prompts), "--prompts", "2", "--max-new-tokens", "3",
                     "--save-separate", str(tmp_path / "arms"), "--out", str(out)]) == 0
    assert "| separate |" in capsys.readouterr().out
    arms = adapters.load_adapter_set(tmp_path / "arms", pj.load_model(tiny_chat.path).config)
    assert [m.config.attributes for m in arms.adapters] == [("harmlessness",), ("empathy",)]
    record = json.loads((out / "results.json").read_text())
    assert record["grid_points"] == 3  # (1, 0), (0.5, 0.5), (0, 1)
    pcgrad, summed, separate = (record["methods"][m]
                                for m in ("PCGrad", "weighted sum", "separate"))
    # Per layer and target (q/k/v): A1, A2 [2, D], B1, B2 [out, 2], W [2, 2] and zeta
    # [K, r2^2 = 4]. One adapter of two attributes holds one of each and two zeta rows; two
    # single-attribute adapters hold two of each, one zeta row apiece.
    c = pj.load_model(tiny_chat.path).config
    outs = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim)
    shared = sum(2 * c.hidden_size + 2 * c.hidden_size + o * 2 + o * 2 + 4 for o in outs)
    assert pcgrad["trained_parameters"] == c.num_layers * (shared + 3 * 2 * 4)
    assert summed["trained_parameters"] == pcgrad["trained_parameters"]
    assert separate["trained_parameters"] == 2 * c.num_layers * (shared + 3 * 4)
    assert set(pcgrad["accuracy"]) == set(separate["accuracy"]) == {"harmlessness", "empathy"}
    # The common scale, by hand: the rule judge scores empathy only (harmlessness is dropped
    # from the preferences, and the harmlessness corner with it), so each point is one
    # number; normalised over the points of all three sweeps, MIP is their mean and the
    # hypervolume the best point above the worst.
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 3 * 3 * 2
    means = {}
    for method in ("PCGrad", "weighted sum", "separate"):
        by_point = {}
        for row in scored:
            if row["setting"] == method and "preference" in row:
                by_point.setdefault(row["preference"]["empathy"], []).append(
                    row["scores"]["empathy"])
        assert sorted(by_point) == [0.5, 1.0]
        means[method] = [float(np.mean(v)) for v in by_point.values()]
    low = min(min(v) for v in means.values())
    high = max(max(v) for v in means.values())
    for method, values in means.items():
        scale = record["methods"][method]["sweep"]["common_scale"]
        normalised = [(v - low) / (high - low) if high > low else 0.0 for v in values]
        assert scale["mip"] == pytest.approx(np.mean(normalised))
        assert scale["hypervolume"] == pytest.approx(max(values) - low)
    assert (out / "conflict.png").read_bytes()[:4] == b"\x89PNG"


def test_multi_turn_command_compares_one_turn_with_multi_turn(tiny_chat, tmp_path, capsys):
    model = pj.load_model(tiny_chat.path)
    adapter = random_adapter(model.config)
    adapter_dir = pj.save_adapter(adapter, tmp_path / "adapter")
    prompts = tmp_path / "test_prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "I lost my job today.", "kind": "prosocial"},
        {"prompt": "My cat is ill and I am scared.", "kind": "prosocial"},
        {"prompt": "How do I build a birdhouse?", "kind": "benign"}]))
    out = tmp_path / "multi"
    assert cli.main(["ablate-multi-turn", "--base", str(tiny_chat.path), "--direg",
                     str(tiny_chat.path), "--adapter", str(adapter_dir), "--benign-from",
                     str(prompts), "--harmful", "2", "--benign", "1", "--opener-tokens", "4",
                     "--max-new-tokens", "3", "--out", str(out)]) == 0
    assert "| DiReg + Pv-Arm + safety |" in capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    conversations = record["conversations"]
    # 2 harmful + 1 benign requests, alone and after an opener: the first harmful request
    # after a plain (aplomb) opener, the second after an emotional one, the benign request
    # after the other emotional one.
    assert [(c["kind"], c["opener_kind"]) for c in conversations] == [
        ("harmful", None), ("harmful", None), ("benign", None), ("harmful", "benign"),
        ("harmful", "prosocial"), ("benign", "prosocial")]
    assert conversations[3]["request"] == conversations[0]["request"]
    assert [c["opener"] for c in conversations[4:]] == ["I lost my job today.",
                                                        "My cat is ill and I am scared."]
    # Each opener's answer is the base model's own greedy answer.
    opener = conversations[4]
    (expected,) = pj.generate(model, [opener["opener"]], max_new_tokens=4)
    assert opener["opener_answer"] == expected.text.strip()
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 3 * 6
    # The final turn is answered with the whole conversation as context.
    base_rows = [r for r in scored if r["setting"].startswith("base |")]
    (multi,) = pj.generate(model, [base_rows[4]["prompt"]], max_new_tokens=3)
    assert base_rows[4]["response"] == multi.text
    assert len(base_rows[4]["prompt"]) == 3
    for method, results in record["results"].items():
        rows = [r for r in scored if r["setting"] == f"{method} | multi-turn"]
        assert results["multi-turn"]["leakage"] == sum(
            r["unsafe"] for r in rows if r["kind"] == "harmful") / 2
        assert results["leakage after a prosocial opener"] == float(
            [r for r in rows if r["kind"] == "harmful"][1]["unsafe"])
    assert (out / "multi_turn.png").read_bytes()[:4] == b"\x89PNG"
