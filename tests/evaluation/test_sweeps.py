"""The strength sweep (`harm-vector --sweep`) on a tiny model: settings, rates recomputed from the
written generations, the plot and the table."""

import json
from fractions import Fraction

from helpers import perturbed_copy, refused

import prosocial_jax as pj
from prosocial_jax.data.prompts import EvaluationPrompts
from prosocial_jax.direg.edit import editor
from prosocial_jax.evaluation import sweeps


def test_sweep_and_plot(tiny_chat, tmp_path):
    base = pj.load_model(tiny_chat.path)
    harmful = perturbed_copy(base, seed=1)
    prompts = EvaluationPrompts(harmful=["Do a bad thing.", "Another bad thing."],
                                benign=["Say hi.", "Name a fruit."])
    rows = sweeps.sweep(base, harmful, editor(base, harmful), top_ks=[0.1, 1.0],
                        scales=[0.0, 1.0, 2.0], prompts=prompts, out_dir=tmp_path / "gen",
                        max_new_tokens=4, batch_size=2)
    assert [r["setting"] for r in rows] == ["base", "harmful fine-tune"] + ["DiReg"] * 4
    assert rows[0]["fluency_delta"] == 0.0
    files = ["generations_base.jsonl", "generations_harmful_fine-tune.jsonl",
             "generations_k0.1_lambda1.0.jsonl", "generations_k0.1_lambda2.0.jsonl",
             "generations_k1.0_lambda1.0.jsonl", "generations_k1.0_lambda2.0.jsonl"]
    assert sorted(p.name for p in (tmp_path / "gen").glob("generations_*.jsonl")) == sorted(files)
    # Every rate, recomputed from the written generations with the rule applied here.
    for row, name in zip(rows, files):
        written = [json.loads(line) for line in (tmp_path / "gen" / name).read_text().splitlines()]
        assert [w["prompt"] for w in written] == prompts.harmful + prompts.benign
        assert [w["refusal"] for w in written] == [refused(w["response"]) for w in written]
        for kind in ("harmful", "benign"):
            texts = [w["response"] for w in written if w["kind"] == kind]
            rate = Fraction(sum(map(refused, texts)), len(texts))
            assert row[f"{kind}_refusal_rate"] == float(rate), (name, kind)
        assert row["fluency_delta"] == row["fluency"] - rows[0]["fluency"]
    sweeps.plot_sweep(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| DiReg | 0.1 | 1 |" in sweeps.sweep_table(rows)


def test_sweep_asks_the_edit_for_each_grid_point_once(tiny_chat, tmp_path):
    base = pj.load_model(tiny_chat.path)
    asked = []

    def edited(top_k, scale):
        asked.append((top_k, scale))
        return base

    prompts = EvaluationPrompts(harmful=["Do a bad thing."], benign=["Say hi."])
    rows = sweeps.sweep(base, base, edited, [0.5, 0.1], [2.0, 0.0, 1.0], prompts,
                        tmp_path / "gen", max_new_tokens=2, batch_size=1)
    assert asked == [(0.5, 2.0), (0.5, 1.0), (0.1, 2.0), (0.1, 1.0)]  # scale 0 is the base
    assert [(r["top_k"], r["scale"]) for r in rows] == [(None, 0.0), (None, None), *asked]
    assert all(r["fluency_delta"] == 0.0 for r in rows)  # every setting is the base model


def test_sweep_table_text():
    rows = [{"setting": "base", "top_k": None, "scale": 0.0, "harmful_refusal_rate": 0.25,
             "benign_refusal_rate": 0.0, "fluency": -1.5, "fluency_delta": 0.0},
            {"setting": "harmful fine-tune", "top_k": None, "scale": None,
             "harmful_refusal_rate": 0.0, "benign_refusal_rate": 0.0625, "fluency": -1.75,
             "fluency_delta": -0.25},
            {"setting": "DiReg", "top_k": 0.1, "scale": 2.0, "harmful_refusal_rate": 1 / 3,
             "benign_refusal_rate": 0.125, "fluency": -1.6254, "fluency_delta": -0.1254}]
    assert sweeps.sweep_table(rows) == "\n".join([
        "| setting | top-k | lambda | harmful refused | benign refused | fluency (delta) |",
        "|---|---|---|---|---|---|",
        "| base |  |  | 25.0% | 0.0% | -1.500 (+0.000) |",
        "| harmful fine-tune |  |  | 0.0% | 6.2% | -1.750 (-0.250) |",
        "| DiReg | 0.1 | 2 | 33.3% | 12.5% | -1.625 (-0.125) |"])
