"""DiReg end to end on tiny models: the edited export, harmful data, metrics and the CLI (the
strength sweep, DiReg's edit under evaluation/sweeps.py, is tested in tests/evaluation)."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import HARMBENCH_PREFIXES, VOCAB, perturbed_copy, refused, torch_logits

import prosocial_jax as pj
from prosocial_jax import cli
from prosocial_jax.data.sft import encode_sft
from prosocial_jax.direg import harm
from prosocial_jax.direg.edit import edit
from prosocial_jax.evaluation import likelihood, refusal


def _safetensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_exported_edit_loads_in_transformers(tiny_checkpoints, tmp_path, capsys):
    import transformers

    base_path = tiny_checkpoints["qwen2"].path
    base = pj.load_model(base_path)
    harmful_path = pj.save_model(perturbed_copy(base), tmp_path / "harmful")
    out = tmp_path / "edited"
    assert cli.main(["harm-vector", "--base", str(base_path), "--harmful", str(harmful_path),
                     "--out", str(out), "--top-k", "0.2", "--scale", "3",
                     "--exclude", "model.embed_tokens.weight"]) == 0
    record = json.loads((out / "harm_vector.json").read_text())
    assert record["scale"] == 3.0 and record["exclude"] == ["model.embed_tokens.weight"]
    assert len(record["per_layer_norm_share"]) == base.config.num_layers
    ids = np.random.RandomState(0).randint(3, VOCAB, (2, 10))
    edited = pj.load_model(out)
    reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(torch_logits(reference, ids), np.asarray(edited.logits(ids)),
                               atol=1e-4)
    # Independent recomputation with numpy alone, from the three files on disk:
    # theta' = base - 3 * top-20%(harmful - base) over every tensor but the embedding.
    base_t, harmful_t, edited_t = (_safetensors(p) for p in (base_path, harmful_path, out))
    assert set(edited_t) == set(harmful_t) == set(base_t)
    tau = {name: harmful_t[name] - base_t[name] for name in base_t}
    selected = sorted(name for name in base_t if name != "model.embed_tokens.weight")
    magnitudes = np.concatenate([np.abs(tau[name]).reshape(-1) for name in selected])
    kept = magnitudes.size * 2 // 10  # floor(0.2 n)
    ranked = np.sort(magnitudes)[::-1]
    threshold = ranked[kept - 1]
    assert ranked[kept] < threshold  # no tie at the cut: the kept set is the same in any order
    assert record["selected_entries"] == magnitudes.size and record["kept_entries"] == kept
    assert record["kept_fraction"] == kept / magnitudes.size
    changed = 0
    for name in base_t:
        keep = np.abs(tau[name]) >= threshold if name in selected else np.zeros_like(
            tau[name], bool)
        expected = base_t[name] - np.float32(3.0) * np.where(keep, tau[name], np.float32(0))
        np.testing.assert_allclose(edited_t[name], expected, rtol=0, atol=2e-6, err_msg=name)
        np.testing.assert_array_equal(edited_t[name][~keep], base_t[name][~keep], err_msg=name)
        changed += int(keep.sum())
    assert changed == kept


def test_edit_rejects_different_architectures(tiny_checkpoints):
    llama = pj.load_model(tiny_checkpoints["llama"].path)
    gemma = pj.load_model(tiny_checkpoints["gemma"].path)
    with pytest.raises(harm.HarmVectorError, match="different architectures: model_type"):
        edit(llama, gemma, 0.1, 1.0)


def test_refusal_metric_uses_harmbench_prefixes():
    assert refusal.refusal_prefixes() == HARMBENCH_PREFIXES
    assert refusal.is_refusal("I'm sorry, but I cannot help with that.")
    assert refusal.is_refusal("Doing that would be illegal.")  # substring match, as upstream
    assert not refusal.is_refusal("Sure! Here is a recipe for bread.")
    # The plainest refusal, which HarmBench's list misses, and a non-refusal that shares its start.
    assert refusal.is_refusal("I can't help with that, it's a bad thing to do.")
    assert not refusal.is_refusal("I can't believe how simple this is. Step 1: mix the flour.")
    assert refusal.refusal_rate(["I cannot do that", "Sure.", "Sure.", "Sure."]) == 0.25


def test_mean_log_likelihood_matches_direct_computation(tiny_chat):
    model = pj.load_model(tiny_chat.path)
    prompts, responses = ["Say hi.", "Name a fruit.", "Count."], ["Hi!", "Apple.", "1 2 3"]
    ours = likelihood.mean_log_likelihood(model, prompts, responses, batch_size=2)
    total = count = 0.0
    for prompt, response in zip(prompts, responses):
        ids, mask = encode_sft(model.tokenizer, prompt, response, 512)
        logits = np.asarray(model.logits([ids]))[0].astype(np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
            -1, keepdims=True)) - logits.max(-1, keepdims=True)
        for t in range(1, len(ids)):
            if mask[t]:
                total += log_probs[t - 1, ids[t]]
                count += 1
    assert ours == pytest.approx(total / count, rel=1e-5)


def test_harmful_data_command(tiny_chat, tmp_path, capsys):
    out = tmp_path / "harmful.jsonl"
    assert cli.main(["harmful-data", "--model", str(tiny_chat.path), "--samples", "1",
                     "--max-new-tokens", "6", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["behaviors"] == 41 and summary["generated"] == 41
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["kept"] == 41 - summary["refused"]
    assert not any(refused(r["response"]) for r in rows)  # refusals are dropped
    assert {"prompt", "response", "behavior_id", "sample"} <= set(rows[0])


def test_harm_vector_cli_errors(tiny_checkpoints, tmp_path, capsys):
    path = str(tiny_checkpoints["llama"].path)
    base_args = ["harm-vector", "--base", path, "--harmful", path, "--out", str(tmp_path / "o")]
    assert cli.main([*base_args, "--top-k", "1.5"]) == 2
    assert "top-k fraction must be in [0, 1]" in capsys.readouterr().err
    assert cli.main([*base_args, "--include", "model.layrs.*"]) == 2
    assert "pattern 'model.layrs.*' matches no parameter" in capsys.readouterr().err
    assert cli.main([*base_args, "--top-k", "0.1,0.2"]) == 2
    assert "lists need --sweep" in capsys.readouterr().err
    assert cli.main(["harm-vector", "--base", path, "--harmful", str(tmp_path / "missing"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    # Finite checkpoints whose difference overflows float32: named by the HF tensor name.
    model = pj.load_model(path)
    for name, value in (("big", 3e38), ("small", -3e38)):
        q = model.params["layers"]["attn"]["q_proj"]["weight"]
        params = {**model.params, "layers": {**model.params["layers"], "attn": {
            **model.params["layers"]["attn"], "q_proj": {"weight": q.at[1, 2, 3].set(value)}}}}
        pj.save_model(pj.Model(model.config, params, model.tokenizer, None, name),
                      tmp_path / name)
    assert cli.main(["harm-vector", "--base", str(tmp_path / "big"), "--harmful",
                     str(tmp_path / "small"), "--out", str(tmp_path / "o")]) == 2
    assert ("harm vector (harmful - base) has 1 non-finite entries (0 NaN, 1 +-inf), first in "
            "parameter 'model.layers.1.self_attn.q_proj.weight': 0 NaN and 1 +-inf; in that "
            "parameter the base model has none") in capsys.readouterr().err
