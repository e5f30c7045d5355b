"""Decode speed of prosocial_jax vs transformers (PyTorch), side by side, on SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/decode_speed.py --out benchmarks/results/decode_speed.json

Both run the same float32 weights (our GGUF load, saved as an HF folder that transformers loads),
the same chat prompts, greedy, the same number of new tokens with no early stop; the generated
tokens are compared. Each library runs in its own worker process, one after the other: in one
process, PyTorch's OpenMP threads keep spinning after each call and steal this machine's two cores
from XLA. Measured in one run:

- decode tokens/s at batch 1 and 16: from the time difference between generating N_LONG and
  N_SHORT new tokens, which cancels tokenisation, prefill and fixed overheads;
- the batch-1 decode step time against the memory-bandwidth bound: bytes of weights read per step
  divided by a copy bandwidth measured here (STREAM convention: 2 x bytes / time);
- prefill tokens/s (batch 16) and compile times (prefill, one 16-step decode chunk).

Timings are medians over REPEATS runs after a warm-up (this 2-core VM is noisy).
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

N_SHORT, N_LONG = 32, 128
REPEATS = 5
BATCHES = (1, 16)


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Best-of-N STREAM-style copy bandwidth: (bytes read + bytes written) / time.

    Copies into a preallocated buffer, so page faults on fresh memory are not timed.
    """
    source = np.ones(int(gib * 2**30) // 4, np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def write_results(path: Path | None, results: dict) -> None:
    """The run's figures as JSON (benchmarks/results/*.json), when a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


def chat_prompts(count: int) -> list[list[dict]]:
    from prosocial_jax.data import prompts as prompt_sets

    return [[{"role": "user", "content": p}] for p in prompt_sets.benign_prompts()[:count]]


def decode_stats(run) -> tuple[dict, list]:
    """Per-step decode time from (N_LONG - N_SHORT) extra tokens; `run(n)` -> (seconds, tokens)."""
    run(N_SHORT)  # warm-up: compilation, allocator, caches
    short, long_, tokens = [], [], None
    for _ in range(REPEATS):
        short.append(run(N_SHORT)[0])
        elapsed, tokens = run(N_LONG)
        long_.append(elapsed)
    step = (statistics.median(long_) - statistics.median(short)) / (N_LONG - N_SHORT)
    return {"step_ms": 1e3 * step, "end_to_end_s": statistics.median(long_)}, tokens


def median_time(fn) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------- workers
def jax_worker(folder: Path) -> dict:
    import jax
    import jax.numpy as jnp

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode, sampling
    from prosocial_jax.models.tokenizer import encode_prompt

    model = pj.load_model(folder, dtype="float32")
    prompts = chat_prompts(max(BATCHES))
    out: dict = {"weight_bytes": sum(x.nbytes for x in jax.tree.leaves(model.params))}

    encoded = [encode_prompt(model.tokenizer, p) for p in prompts]
    length = decode._round_up(max(len(e) for e in encoded), decode.PROMPT_BUCKET)
    tokens = np.zeros((len(prompts), length), np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, ids in enumerate(encoded):
        tokens[row, length - len(ids):], mask[row, length - len(ids):] = ids, True
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    key = jax.random.key(0)

    start = time.perf_counter()
    prefill = decode.prefill.lower(model.config, model.params, tokens, mask, key, 16,
                                   max_len=length + 16, num_new=16).compile()
    out["compile_prefill_s"] = time.perf_counter() - start
    state = prefill(model.params, tokens, mask, key, 16)
    start = time.perf_counter()
    decode.decode_chunk.lower(model.config, model.params, state,
                              sampling.SamplingParams.create(len(prompts)),
                              jnp.asarray([-1], jnp.int32), 0, num_steps=16).compile()
    out["compile_decode_chunk_s"] = time.perf_counter() - start
    out["prefill_tokens"] = int(sum(len(e) for e in encoded))
    out["prefill_s"] = median_time(
        lambda: jax.block_until_ready(prefill(model.params, tokens, mask, key, 16).logits))

    for batch in BATCHES:
        def run(n, rows=prompts[:batch]):
            start = time.perf_counter()
            results = pj.generate(model, rows, max_new_tokens=n, batch_size=len(rows),
                                  stop_tokens=[])
            return time.perf_counter() - start, [r.tokens for r in results]
        out[f"batch{batch}"], out[f"tokens{batch}"] = decode_stats(run)
    return out


def torch_worker(folder: Path) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    prompts = chat_prompts(max(BATCHES))

    def encode(rows):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                 for p in rows]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    out: dict = {"threads": torch.get_num_threads()}
    batch16 = encode(prompts)
    with torch.no_grad():
        out["prefill_s"] = median_time(lambda: model(**batch16))
    for batch in BATCHES:
        encoded = encode(prompts[:batch])

        def run(n, encoded=encoded):
            start = time.perf_counter()
            with torch.no_grad():
                result = model.generate(**encoded, max_new_tokens=n, do_sample=False,
                                        eos_token_id=model.config.vocab_size + 1,  # never stop
                                        pad_token_id=tokenizer.pad_token_id)
            new = result[:, encoded["input_ids"].shape[1]:].tolist()
            return time.perf_counter() - start, new
        out[f"batch{batch}"], out[f"tokens{batch}"] = decode_stats(run)
    return out


def run_worker(kind: str, folder: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        subprocess.run([sys.executable, __file__, "--worker", kind, "--folder", str(folder),
                        "--out", handle.name], check=True)
        return json.loads(Path(handle.name).read_text())


# ---------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        result = (jax_worker if args.worker == "jax" else torch_worker)(args.folder)
        args.out.write_text(json.dumps(result))
        return

    import prosocial_jax as pj

    with tempfile.TemporaryDirectory() as tmp:
        folder = pj.save_model(pj.load_model("bundled:smollm2", dtype="float32"),
                               Path(tmp) / "smollm2")
        bandwidth = copy_bandwidth()
        ours = run_worker("jax", folder)
        theirs = run_worker("torch", folder)

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised), float32",
        "weight_bytes": ours["weight_bytes"],
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "compile_s": {"prefill": ours["compile_prefill_s"],
                      "decode_chunk_16_steps": ours["compile_decode_chunk_s"]},
        "prefill_batch16": {
            "real_tokens": ours["prefill_tokens"],
            "prosocial_jax_tokens_per_s": ours["prefill_tokens"] / ours["prefill_s"],
            "transformers_tokens_per_s": ours["prefill_tokens"] / theirs["prefill_s"]},
        "decode": {},
    }
    for batch in BATCHES:
        mine, ref = ours[f"batch{batch}"], theirs[f"batch{batch}"]
        identical = sum(a == b for a, b in zip(ours[f"tokens{batch}"], theirs[f"tokens{batch}"]))
        entry = {"prosocial_jax_step_ms": mine["step_ms"],
                 "transformers_step_ms": ref["step_ms"],
                 "prosocial_jax_tokens_per_s": 1e3 * batch / mine["step_ms"],
                 "transformers_tokens_per_s": 1e3 * batch / ref["step_ms"],
                 "speedup": ref["step_ms"] / mine["step_ms"],
                 "identical_rows": f"{identical}/{batch}"}
        if batch == 1:
            entry["bandwidth_bound_step_ms"] = 1e3 * ours["weight_bytes"] / bandwidth
            entry["step_over_bound"] = mine["step_ms"] / entry["bandwidth_bound_step_ms"]
        results["decode"][str(batch)] = entry

    print(json.dumps(results, indent=2))
    print(f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"weights {ours['weight_bytes'] / 1e6:.0f} MB")
    for batch, entry in results["decode"].items():
        print(f"batch {batch}: prosocial_jax {entry['prosocial_jax_tokens_per_s']:.1f} tok/s "
              f"({entry['prosocial_jax_step_ms']:.1f} ms/step), transformers "
              f"{entry['transformers_tokens_per_s']:.1f} tok/s "
              f"({entry['transformers_step_ms']:.1f} ms/step): {entry['speedup']:.2f}x; "
              f"identical rows {entry['identical_rows']}")
    one = results["decode"]["1"]
    print(f"batch-1 step {one['prosocial_jax_step_ms']:.1f} ms vs bandwidth bound "
          f"{one['bandwidth_bound_step_ms']:.1f} ms: {one['step_over_bound']:.2f}x")
    pre = results["prefill_batch16"]
    print(f"prefill (batch 16, {pre['real_tokens']} tokens): prosocial_jax "
          f"{pre['prosocial_jax_tokens_per_s']:.0f} tok/s, transformers "
          f"{pre['transformers_tokens_per_s']:.0f} tok/s")
    print(f"compile: prefill {results['compile_s']['prefill']:.1f} s, 16-step decode chunk "
          f"{results['compile_s']['decode_chunk_16_steps']:.1f} s")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
