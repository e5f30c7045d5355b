"""Guided decoding speed: prosocial_jax vs a PyTorch reference, side by side, on SmolLM2-135M.

    .venv/bin/python benchmarks/guided_decode_speed.py --out benchmarks/results/guided_decode.json

Base model and Pv-Arm backbone are both SmolLM2-135M-Instruct in float32 (two separate copies
of the weights, as with a DiReg-edited base), the Pv-Arm a random PBLoRA adapter (non-zero
factors, q/k/v, r = 4), greedy, 64 new tokens, w = 1, no early stop.

The reference does what earlier guided-decoding implementations do: two transformers models,
one KV cache each, base log-softmax plus w times reward log-softmax, argmax, one step at a time
in a Python loop. It gets the adapter merged into the reward model's weights at the one
preference all rows share (dW(alpha) added to q/k/v), which is cheaper than any per-row
preference could be, and it has no safety stage. Ours runs per-row preferences with the safety
stage on (Pv-Arm forward on 2B rows) and off (B rows); with the stage off the tokens must equal
the reference's (compared row by row).

Also measured in the same run: each guided step against its bound, the bytes it must read
(weights of both models + adapter + both KV caches' real tokens at mid-generation) over the
copy bandwidth; a guided step's time over a plain (unguided) step's time, next to the ideal,
the ratio of those bytes over the plain step's (the base model's weights + cache); and the
guided step with the safety stage in the stacked layer layout (scanned layers, as on
accelerators) and in the per-layer one, beside the packed one that CPUs run by default where
the native kernel builds; and guided steps with the base
model as its own Pv-Arm backbone (`reward` left out, as when no DiReg edit separates them),
where one forward a step runs base and Pv-Arm rows together on the one set of weights (bound:
the weights once), its tokens compared with the two-copy runs'.

Long context (leave it out with --skip-long): one prompt of 2,048 and of 8,192 random tokens is
prefilled (base model, and the Pv-Arm on its prosocial and safety rows), then greedy guided
steps with the safety stage on are timed from that state copied to batch 1 and 8, against the
reference doing the same from its two prefilled caches; with each step's bound (both models'
weights and the three caches' tokens over the copy bandwidth), the prefill times and the peak
memory (VmHWM) of both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from decode_speed import (
    CONTEXTS,
    LONG_BATCHES,
    LONG_STEPS,
    chat_prompts,
    copied_to_rows,
    copy_bandwidth,
    kv_bytes_per_token,
    long_prompts,
    peak_memory_gb,
    step_figures,
    write_results,
)

N_SHORT, N_LONG = 16, 64
REPEATS = 3
BATCHES = (1, 16)
WEIGHT = 1.0


def decode_stats(run) -> tuple[dict, list]:
    """Per-step time from (N_LONG - N_SHORT) extra tokens; `run(n)` -> (seconds, tokens)."""
    # Warm-up: compilation, allocator, caches. Both lengths: each compiles its own programs (the
    # cache is sized by the new tokens), which would otherwise land in the first timed run.
    run(N_SHORT)
    run(N_LONG)
    short, long_, tokens = [], [], None
    for _ in range(REPEATS):
        short.append(run(N_SHORT)[0])
        elapsed, tokens = run(N_LONG)
        long_.append(elapsed)
    step = (statistics.median(long_) - statistics.median(short)) / (N_LONG - N_SHORT)
    return {"step_ms": 1e3 * step, "end_to_end_s": statistics.median(long_)}, tokens


def random_adapter(model):
    import jax
    import jax.numpy as jnp

    from prosocial_jax.models import adapters

    adapter = adapters.init_adapter(model.config, adapters.AdapterConfig(), jax.random.key(0))
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.02,
                                                jnp.float32), adapter.params)
    return adapters.Adapter(adapter.config, params)


def uniform(adapter) -> np.ndarray:
    k = adapter.config.num_attributes
    return np.full(k, 1.0 / k, np.float32)


# ---------------------------------------------------------------------------- workers
def jax_worker(folder: Path, adapter_dir: Path) -> dict:
    import jax

    import prosocial_jax as pj
    from prosocial_jax.models.tokenizer import encode_prompt

    base = pj.load_model(folder, dtype="float32")
    reward = pj.load_model(folder, dtype="float32")  # its own copy of the weights
    adapter = pj.load_adapter(adapter_dir, reward.config)
    prompts = chat_prompts(max(BATCHES))
    out: dict = {
        "weight_bytes": sum(x.nbytes for x in jax.tree.leaves(base.params)),
        "adapter_bytes": sum(x.nbytes for x in jax.tree.leaves(adapter.params)),
        "prompt_tokens": [len(encode_prompt(base.tokenizer, p)) for p in prompts],
        "kv_bytes_per_token": kv_bytes_per_token(base.config)}
    guided = dict(adapter=adapter, reward=reward, preference=uniform(adapter), guidance=WEIGHT)
    shared = dict(guided, reward=None)  # the base model is its own Pv-Arm backbone
    modes = {"plain": {},
             "guided_safety": dict(guided, safety_margin=3.0),
             "guided_no_safety": dict(guided, safety_stage=False),
             "guided_safety_stacked": dict(guided, safety_margin=3.0, layer_layout="stacked"),
             "guided_safety_per_layer": dict(guided, safety_margin=3.0,
                                             layer_layout="per_layer"),
             "guided_safety_shared": dict(shared, safety_margin=3.0),
             "guided_no_safety_shared": dict(shared, safety_stage=False)}
    for batch in BATCHES:
        for mode, kwargs in modes.items():
            def run(n, rows=prompts[:batch], kwargs=kwargs):
                start = time.perf_counter()
                results = pj.generate(base, rows, max_new_tokens=n, batch_size=len(rows),
                                      stop_tokens=[], **kwargs)
                return time.perf_counter() - start, [r.tokens for r in results]
            out[f"{mode}{batch}"], out[f"tokens_{mode}{batch}"] = decode_stats(run)
            print(f"jax {mode} batch {batch}: {out[f'{mode}{batch}']['step_ms']:.1f} ms/step",
                  file=sys.stderr)
    return out


def torch_worker(folder: Path, merged: Path) -> dict:
    import torch
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    reward = transformers.AutoModelForCausalLM.from_pretrained(merged,
                                                               dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    prompts = chat_prompts(max(BATCHES))
    out: dict = {"threads": torch.get_num_threads()}

    def guided(encoded, n):
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        step_b = base(input_ids=ids, attention_mask=mask, position_ids=positions,
                      use_cache=True)
        step_r = reward(input_ids=ids, attention_mask=mask, position_ids=positions,
                        use_cache=True)
        next_position = positions[:, -1:] + 1
        new = []
        for _ in range(n):
            score = (torch.log_softmax(step_b.logits[:, -1].float(), -1)
                     + WEIGHT * torch.log_softmax(step_r.logits[:, -1].float(), -1))
            token = score.argmax(-1, keepdim=True)
            new.append(token)
            mask = torch.cat([mask, torch.ones_like(token)], dim=-1)
            step_b = base(input_ids=token, attention_mask=mask, position_ids=next_position,
                          cache=step_b.cache, use_cache=True)
            step_r = reward(input_ids=token, attention_mask=mask, position_ids=next_position,
                            cache=step_r.cache, use_cache=True)
            next_position = next_position + 1
        return torch.cat(new, dim=-1).tolist()

    for batch in BATCHES:
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                 for p in prompts[:batch]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

        def run(n, encoded=encoded):
            start = time.perf_counter()
            with torch.no_grad():
                tokens = guided(encoded, n)
            return time.perf_counter() - start, tokens
        out[f"guided{batch}"], out[f"tokens{batch}"] = decode_stats(run)
        print(f"torch guided batch {batch}: {out[f'guided{batch}']['step_ms']:.1f} ms/step",
              file=sys.stderr)
    return out


def jax_long_worker(folder: Path, adapter_dir: Path, context: int) -> dict:
    """Guided decoding (safety stage on) from one prefilled prompt of `context` tokens, copied
    to LONG_BATCHES rows; prefill time and peak memory."""
    import jax
    import jax.numpy as jnp

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode, sampling
    from prosocial_jax.models import layers

    base = pj.load_model(folder, dtype="float32")
    reward = pj.load_model(folder, dtype="float32")
    adapter = pj.load_adapter(adapter_dir, reward.config)
    params = layers.for_forward(base.params, "auto")

    def guide(rows):
        return decode._guide(base, reward, adapter, rows, uniform(adapter), None, WEIGHT,
                             safety_margin=3.0, plausibility=0.0, banned=None,
                             safety_stage=True)[:2]

    spec, inputs = guide(1)
    chunk = decode.auto_prefill_chunk(3 * base.config.num_heads)  # what generate picks
    prompt_len, chunk = decode.prefill_chunks(context, chunk)
    tokens = jnp.asarray(long_prompts(1, context, base.config.vocab_size), jnp.int32)
    tokens = jnp.pad(tokens, ((0, 0), (prompt_len - context, 0)))
    mask = jnp.arange(prompt_len)[None, :] >= prompt_len - context
    steps, num_new = 16, 16 + LONG_STEPS
    key = jax.random.key(0)
    prefill = decode.prefill.lower(base.config, params, tokens, mask, key, num_new, inputs,
                                   max_len=prompt_len + num_new, num_new=num_new, spec=spec,
                                   chunk=chunk).compile()
    jax.block_until_ready(prefill(params, tokens, mask, key, num_new, inputs).logits)
    start = time.perf_counter()
    prompt_state = prefill(params, tokens, mask, key, num_new, inputs)
    jax.block_until_ready(prompt_state.reward_logits)
    out = {"prefill_s": time.perf_counter() - start, "prefill_peak_gb": peak_memory_gb(),
           "prefill_chunk": chunk}
    for batch in LONG_BATCHES:
        state = copied_to_rows(prompt_state, batch)
        spec, inputs = guide(batch)
        args = (sampling.SamplingParams.create(batch), jnp.asarray([-1], jnp.int32), 0, inputs)
        state, _ = decode.decode_chunk(base.config, params, state, *args, num_steps=steps,
                                       spec=spec)
        jax.block_until_ready(state.tokens)  # warm-up chunk: compiles
        start = time.perf_counter()
        for _ in range(LONG_STEPS // steps):
            state, _ = decode.decode_chunk(base.config, params, state, *args, num_steps=steps,
                                           spec=spec)
        jax.block_until_ready(state.tokens)
        out[f"step_ms{batch}"] = 1e3 * (time.perf_counter() - start) / LONG_STEPS
        out[f"overrides{batch}"] = int(np.asarray(state.overrides).sum())
        print(f"jax guided {context}x{batch}: {out[f'step_ms{batch}']:.1f} ms/step",
              file=sys.stderr)
    out["peak_gb"] = peak_memory_gb()
    return out


def torch_long_worker(folder: Path, merged: Path, context: int) -> dict:
    """The reference's guided loop from one prefilled prompt, its two caches copied to
    LONG_BATCHES rows."""
    import copy

    import torch
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    reward = transformers.AutoModelForCausalLM.from_pretrained(merged,
                                                               dtype=torch.float32).eval()
    ids = torch.as_tensor(long_prompts(1, context, base.config.vocab_size))
    out: dict = {"attention": base.config._attn_implementation}
    with torch.no_grad():
        for model in (base, reward):  # warm-up, as for ours
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        prompts = [model(input_ids=ids, use_cache=True, logits_to_keep=1)
                   for model in (base, reward)]
        out["prefill_s"] = time.perf_counter() - start
        out["prefill_peak_gb"] = peak_memory_gb()
        for batch in LONG_BATCHES:
            caches = [copy.deepcopy(prompt.cache) for prompt in prompts]
            for cache in caches:
                cache.batch_repeat_interleave(batch)
            logits = [prompt.logits[:, -1].repeat(batch, 1) for prompt in prompts]
            for step in range(16 + LONG_STEPS):
                if step == 16:
                    start = time.perf_counter()
                score = (torch.log_softmax(logits[0].float(), -1)
                         + WEIGHT * torch.log_softmax(logits[1].float(), -1))
                token = score.argmax(-1, keepdim=True)
                steps = [model(input_ids=token, cache=cache, use_cache=True)
                         for model, cache in zip((base, reward), caches)]
                caches = [s.cache for s in steps]
                logits = [s.logits[:, -1] for s in steps]
            out[f"step_ms{batch}"] = 1e3 * (time.perf_counter() - start) / LONG_STEPS
            print(f"torch guided {context}x{batch}: {out[f'step_ms{batch}']:.1f} ms/step",
                  file=sys.stderr)
            del caches
    out["peak_gb"] = peak_memory_gb()
    return out


WORKERS = {"jax": jax_worker, "torch": torch_worker, "jax_long": jax_long_worker,
           "torch_long": torch_long_worker}


def run_worker(kind: str, folder: Path, other: Path, context: int = 0) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        subprocess.run([sys.executable, __file__, "--worker", kind, "--folder", str(folder),
                        "--other", str(other), "--context", str(context),
                        "--out", handle.name], check=True)
        return json.loads(Path(handle.name).read_text())


def merged_reward(model, adapter, preference: np.ndarray):
    """The backbone with dW(alpha) added to every targeted weight (the reference's reward)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from prosocial_jax.models import adapters
    from prosocial_jax.models.projections import PROJECTIONS

    layers = jax.tree.map(np.array, model.params["layers"])
    for target, factors in adapter.params.items():
        weight = layers[PROJECTIONS[target].group][target]["weight"]
        for layer in range(weight.shape[0]):
            layer_factors = {k: np.asarray(v[layer], np.float64) for k, v in factors.items()}
            weight[layer] += adapters.dense_delta(layer_factors, preference,
                                                  adapter.config.scale)
    params = {**model.params, "layers": jax.tree.map(jnp.asarray, layers)}
    return dataclasses.replace(model, params=params)


# ---------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--skip-long", action="store_true",
                        help="leave out the long-context part (2,048 and 8,192 tokens)")
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--other", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        extra = (args.context,) if args.worker.endswith("_long") else ()
        args.out.write_text(json.dumps(WORKERS[args.worker](args.folder, args.other, *extra)))
        return

    import prosocial_jax as pj

    with tempfile.TemporaryDirectory() as tmp:
        model = pj.load_model("bundled:smollm2", dtype="float32")
        folder = pj.save_model(model, Path(tmp) / "smollm2")
        adapter = random_adapter(model)
        adapter_dir = pj.save_adapter(adapter, Path(tmp) / "adapter")
        merged = pj.save_model(merged_reward(model, adapter, uniform(adapter)),
                               Path(tmp) / "smollm2-merged")
        del model
        bandwidth = copy_bandwidth()
        ours = run_worker("jax", folder, adapter_dir)
        theirs = run_worker("torch", folder, merged)
        long_runs = {context: (run_worker("jax_long", folder, adapter_dir, context),
                               run_worker("torch_long", folder, merged, context))
                     for context in (() if args.skip_long else CONTEXTS)}

    weights, adapter_bytes = ours["weight_bytes"], ours["adapter_bytes"]
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "setting": f"SmolLM2-135M-Instruct float32 as base and Pv-Arm backbone, random PBLoRA "
                   f"adapter, greedy, {N_LONG} new tokens, w = {WEIGHT}",
        "weight_bytes": weights, "adapter_bytes": adapter_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9, "batches": {}}
    for batch in BATCHES:
        ref = theirs[f"guided{batch}"]["step_ms"]
        entry = {"reference_step_ms": ref, "reference_tokens_per_s": 1e3 * batch / ref}
        plain = ours[f"plain{batch}"]["step_ms"]
        # Bytes a step must read: weights (+ adapter) and the KV caches' real tokens at
        # mid-generation; the safety stage adds B Pv-Arm rows, so three caches of B rows
        # against the plain step's one.
        context = np.mean(ours["prompt_tokens"][:batch]) + (N_SHORT + N_LONG) / 2
        kv_per_row = context * ours["kv_bytes_per_token"]
        plain_bytes = weights + batch * kv_per_row
        needed = {"guided_safety": 2 * weights + adapter_bytes + 3 * batch * kv_per_row,
                  "guided_no_safety": 2 * weights + adapter_bytes + 2 * batch * kv_per_row}
        needed["guided_safety_stacked"] = needed["guided_safety"]
        needed["guided_safety_per_layer"] = needed["guided_safety"]
        # One set of weights where the base model is its own Pv-Arm backbone.
        needed["guided_safety_shared"] = needed["guided_safety"] - weights
        needed["guided_no_safety_shared"] = needed["guided_no_safety"] - weights
        for mode, nbytes in needed.items():
            step = ours[f"{mode}{batch}"]["step_ms"]
            bound = 1e3 * nbytes / bandwidth
            entry[mode] = {"step_ms": step, "tokens_per_s": 1e3 * batch / step,
                           "speedup_vs_reference": ref / step,
                           "bandwidth_bound_step_ms": bound, "step_over_bound": step / bound,
                           "step_over_plain_step": step / plain,
                           "bytes_ratio": nbytes / plain_bytes,
                           "step_ratio_over_bytes_ratio": step / plain * plain_bytes / nbytes}
        entry["plain_step_ms"] = plain
        entry["plain_step_over_bound"] = plain / (1e3 * plain_bytes / bandwidth)
        identical = sum(a == b for a, b in zip(ours[f"tokens_guided_no_safety{batch}"],
                                               theirs[f"tokens{batch}"]))
        entry["identical_rows_vs_reference"] = f"{identical}/{batch}"
        same = sum(a == b for a, b in zip(ours[f"tokens_guided_safety{batch}"],
                                          ours[f"tokens_guided_safety_stacked{batch}"]))
        entry["identical_rows_packed_vs_stacked"] = f"{same}/{batch}"
        same = sum(a == b for a, b in zip(ours[f"tokens_guided_safety{batch}"],
                                          ours[f"tokens_guided_safety_per_layer{batch}"]))
        entry["identical_rows_packed_vs_per_layer"] = f"{same}/{batch}"
        for stage in ("safety", "no_safety"):  # one forward vs two, on the same weights
            same = sum(a == b for a, b in zip(ours[f"tokens_guided_{stage}{batch}"],
                                              ours[f"tokens_guided_{stage}_shared{batch}"]))
            entry[f"identical_rows_shared_vs_two_copies_{stage}"] = f"{same}/{batch}"
        results["batches"][str(batch)] = entry
    results["long_context"] = {}
    for context, (mine, ref) in long_runs.items():
        for batch in LONG_BATCHES:
            # Both models' weights, the adapter, and three caches of `batch` rows (base,
            # prosocial, safety) at mid-generation.
            tokens = context + 16 + LONG_STEPS / 2
            nbytes = 2 * weights + adapter_bytes + 3 * batch * tokens * ours["kv_bytes_per_token"]
            bound = 1e3 * nbytes / bandwidth
            results["long_context"][f"{context}x{batch}"] = {
                **step_figures(mine[f"step_ms{batch}"], ref[f"step_ms{batch}"], batch, bound,
                               "reference"),
                "safety_overrides": mine[f"overrides{batch}"]}
        results["long_context"][f"{context}_memory"] = {
            "prefill_s": mine["prefill_s"], "reference_prefill_s": ref["prefill_s"],
            "prefill_chunk": mine["prefill_chunk"], "reference_attention": ref["attention"],
            "peak_gb_after_prefill": mine["prefill_peak_gb"],
            "reference_peak_gb_after_prefill": ref["prefill_peak_gb"],
            "peak_gb": mine["peak_gb"], "reference_peak_gb": ref["peak_gb"]}
    print(json.dumps(results, indent=2))
    print(f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s (one thread)")
    for batch, entry in results["batches"].items():
        print(f"batch {batch} plain: {entry['plain_step_ms']:.1f} ms/step "
              f"({entry['plain_step_over_bound']:.2f}x its bound)")
        for mode in ("guided_safety", "guided_no_safety", "guided_safety_stacked",
                     "guided_safety_per_layer", "guided_safety_shared", "guided_no_safety_shared"):
            e = entry[mode]
            print(f"batch {batch} {mode}: {e['tokens_per_s']:.1f} tok/s "
                  f"({e['step_ms']:.1f} ms/step = {e['step_over_bound']:.2f}x the bound of "
                  f"{e['bandwidth_bound_step_ms']:.1f} ms) vs reference "
                  f"{entry['reference_tokens_per_s']:.1f} tok/s: {e['speedup_vs_reference']:.2f}x;"
                  f" guided/plain step {e['step_over_plain_step']:.2f}x, bytes ratio "
                  f"{e['bytes_ratio']:.2f} ({e['step_ratio_over_bytes_ratio']:.2f}x it)")
        print(f"batch {batch}: identical rows vs reference "
              f"{entry['identical_rows_vs_reference']}; packed vs stacked "
              f"{entry['identical_rows_packed_vs_stacked']}, vs per-layer "
              f"{entry['identical_rows_packed_vs_per_layer']}; one forward (shared weights) "
              f"vs two copies {entry['identical_rows_shared_vs_two_copies_safety']} (stage on),"
              f" {entry['identical_rows_shared_vs_two_copies_no_safety']} (off)")
    for key, e in results["long_context"].items():
        if key.endswith("_memory"):
            print(f"context {key[:-7]}: prefill {e['prefill_s']:.1f} s (chunks of "
                  f"{e['prefill_chunk']}) vs reference {e['reference_prefill_s']:.1f} s; peak "
                  f"{e['peak_gb']:.2f} GB vs {e['reference_peak_gb']:.2f} GB")
        else:
            print(f"context {key} guided with the safety stage: {e['step_ms']:.1f} ms/step = "
                  f"{e['step_over_bound']:.2f}x the bound of {e['bandwidth_bound_step_ms']:.1f} "
                  f"ms; {e['speedup_vs_reference']:.2f}x the reference "
                  f"({e['reference_step_ms']:.1f} ms)")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
