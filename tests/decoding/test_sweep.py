"""Preference sweeps: simplex grids, one batched decode for prompts x points, the command."""

import json
import math

import numpy as np
import pytest
from helpers import random_adapter

import prosocial_jax as pj
from prosocial_jax.decoding import decode
from prosocial_jax.decoding.sweep import SweepSettings, simplex_grid, sweep, sweep_batch_size

SIX = ("harmlessness", "empathy", "sensitivity", "non_judgmental", "truthfulness",
       "helpfulness")


@pytest.mark.parametrize("k,step", [(2, 0.5), (3, 0.25), (6, 0.5), (6, 0.2), (4, 1.0)])
def test_lattice_counts_sums_and_corners(k, step):
    names = SIX[:k]
    n = round(1 / step)
    grid = simplex_grid(names, step, centre=False)
    assert grid.shape == (math.comb(n + k - 1, k - 1), k)
    np.testing.assert_allclose(grid.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(grid * n, np.round(grid * n), atol=1e-5)  # multiples of step
    assert len({tuple(p) for p in np.round(grid * n).astype(int)}) == len(grid)  # distinct
    for corner in np.eye(k):
        assert any(np.allclose(p, corner) for p in grid)
    with_centre = simplex_grid(names, step)
    assert len(with_centre) == len(grid) + (n % k != 0)
    assert any(np.allclose(p, 1 / k) for p in with_centre)


def test_three_attribute_grid_by_hand():
    grid = simplex_grid(("a", "b", "c"), 0.5)
    np.testing.assert_allclose(grid, [[1, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 1, 0],
                                      [0, 0.5, 0.5], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]],
                               atol=1e-7)


def test_subset_with_the_rest_fixed():
    grid = simplex_grid(SIX, 0.25, over=["empathy", "helpfulness"],
                        fixed="harmlessness=0.2,truthfulness=0.2")
    # 5 lattice points over two attributes (centre 0.5/0.5 among them), scaled to 0.6.
    np.testing.assert_allclose(grid[:, [1, 5]], [[0.6, 0], [0.45, 0.15], [0.3, 0.3],
                                                 [0.15, 0.45], [0, 0.6]], atol=1e-7)
    np.testing.assert_allclose(grid[:, [0, 4]], 0.2, atol=1e-7)
    assert not grid[:, [2, 3]].any()
    np.testing.assert_allclose(grid.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(step=0.3), "does not divide 1"),
    (dict(step=0), "step must be in"),
    (dict(step=0.5, over=["kindness"]), "unknown: \\['kindness'\\]"),
    (dict(step=0.5, over=["empathy"], fixed={"empathy": 0.1}), "both varied"),
    (dict(step=0.5, over=["empathy"], fixed="truthfulness=0.6,helpfulness=0.4"),
     "leave no weight"),
    (dict(step=0.5, over=["empathy"], fixed="truthfulness=-1"), "finite and >= 0"),
    (dict(step=0.5, fixed="kindness=0.1"), "unknown attributes \\['kindness'\\]"),
    (dict(step=0.5, over=["empathy"], fixed="truthfulness"), "name=weight pairs"),
])
def test_bad_grids_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simplex_grid(SIX, **kwargs)
    if set(kwargs) == {"step"}:
        with pytest.raises(ValueError, match=message):
            SweepSettings(step=kwargs["step"])


def test_batch_size_from_free_memory(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    c = model.config
    # A 20-token prompt takes 32 slots (prompts pad to multiples of 32), +16 new tokens.
    kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
    per_row = 48 * 3 * kv + 4 * 3 * 4 * c.vocab_size  # base + 2 Pv-Arm rows; logits
    assert sweep_batch_size(model, model, 20, 16, free_bytes=2 * 10 * per_row) == 8
    assert sweep_batch_size(model, model, 20, 16, free_bytes=2 * 10 * per_row, cap=4) == 4
    assert sweep_batch_size(model, model, 20, 16, free_bytes=2 * 2 * per_row) == 2
    with pytest.raises(MemoryError, match="one sweep row needs"):
        sweep_batch_size(model, model, 20, 16, free_bytes=per_row)
    # An adapter set of six members: six reward cache rows and seven models' logits per row.
    per_arm_row = 48 * 7 * kv + 4 * 7 * 4 * c.vocab_size
    assert sweep_batch_size(model, model, 20, 16, free_bytes=2 * 10 * per_arm_row,
                            reward_rows=6) == 8
    assert sweep_batch_size(model, model, 20, 16, free_bytes=2 * 10 * per_row,
                            reward_rows=6) == 4


def test_sweep_equals_separate_generate_calls_and_prefills_each_prompt_once_per_batch(
        tiny_checkpoints, monkeypatch):
    base = pj.load_model(tiny_checkpoints["llama"].path)
    reward = pj.load_model(tiny_checkpoints["qwen2"].path)
    adapter = random_adapter(reward.config, seed=3, scale=0.5)
    prompts = [[5, 17, 33, 8, 9, 60], [7, 3], [11, 12, 13, 14]]
    grid = simplex_grid(adapter.config.attributes, 0.5,
                        over=["empathy", "harmlessness"])  # 3 points
    common = dict(reward=reward, max_new_tokens=8, stop_tokens=[], guidance=1.5,
                  safety_margin=0.5)
    separate = [pj.generate(base, prompts, adapter=adapter, preference=point, **common)
                for point in grid]
    calls = []
    real_prefill = decode.prefill

    def counting_prefill(config, params, tokens, mask, *args, sources=None, **kwargs):
        rows = mask.shape[0] if sources is None else len(sources)  # None: nothing repeated
        calls.append((int(np.asarray(mask).any(1).sum()), rows))
        return real_prefill(config, params, tokens, mask, *args, sources=sources, **kwargs)

    monkeypatch.setattr(decode, "prefill", counting_prefill)
    swept = sweep(base, prompts, adapter, grid, batch_size=8, **common)
    assert [[r.tokens for r in answers] for answers in swept] == [
        [separate[g][p].tokens for g in range(len(grid))] for p in range(len(prompts))]
    assert [[r.safety_overrides for r in answers] for answers in swept] == [
        [separate[g][p].safety_overrides for g in range(len(grid))] for p in range(len(prompts))]
    assert sum(r.safety_overrides for answers in swept for r in answers) > 0
    assert swept[1][2].preference == pytest.approx(grid[2])
    # 9 rows in batches of 8 (prompt-major): rows 0-7 continue prompts 0, 1 and 2, row 8
    # prompt 2 (and 7 padding rows): 4 prompt prefills instead of 9.
    assert calls == [(3, 8), (1, 8)]


def test_sweep_command_writes_rows_evaluate_reports_as_a_sweep(tiny_chat, tmp_path, capsys):
    from prosocial_jax import cli

    chat = pj.load_model(tiny_chat.path)
    adapter_dir = pj.save_adapter(random_adapter(chat.config, seed=1), tmp_path / "adapter")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi.", "kind": "benign"}) + "\n"
                       + json.dumps({"prompt": "I failed my exam.", "kind": "prosocial",
                                     "preference": "empathy=1"}) + "\n"
                       + "not json\n")
    out = tmp_path / "sweep.jsonl"
    code = cli.main(["sweep", "--model", str(tiny_chat.path), "--adapter", str(adapter_dir),
                     "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "4",
                     "--step", "0.5", "--over", "empathy,helpfulness",
                     "--fixed", "harmlessness=0.5", "--setting", "pv-arm"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"{prompts}:3: skipped" in err
    assert f"{prompts}:2: warning: preference ignored: a sweep decodes every row" in err
    assert "2 prompt(s) x 3 preference(s) = 6 rows" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["point"]) for r in rows] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1),
                                                       (2, 2)]
    assert [r["preference"]["empathy"] for r in rows[:3]] == [0.5, 0.25, 0.0]
    assert all(r["preference"]["harmlessness"] == 0.5 and r["setting"] == "pv-arm"
               and r["kind"] in ("benign", "prosocial") for r in rows)
    report = tmp_path / "report"
    assert cli.main(["evaluate", "--generations", str(out), "--out", str(report),
                     "--judge", "rules"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert len(metrics["sweeps"]["pv-arm"]["points"]) == 3
    # Refused before any decoding: a sweep that already has its output, a bad grid.
    assert cli.main(["sweep", "--model", str(tiny_chat.path), "--adapter", str(adapter_dir),
                     "--prompt", "hi", "--out", str(out)]) != 0
    assert "exists" in capsys.readouterr().err
    assert cli.main(["sweep", "--model", str(tiny_chat.path), "--adapter", str(adapter_dir),
                     "--prompt", "hi", "--out", str(tmp_path / "x.jsonl"),
                     "--step", "0.3"]) != 0
    assert "step 0.3 does not divide 1" in capsys.readouterr().err
