"""Decode speed of prosocial_jax vs transformers (PyTorch), side by side, on SmolLM2-135M-Instruct,
against this machine's memory-bandwidth and matmul limits measured in the same run.

    .venv/bin/python benchmarks/decode_speed.py --out benchmarks/results/decode_speed.json

Both run the same float32 weights (our GGUF load, saved as an HF folder that transformers loads),
greedy, no early stop; generated tokens are compared row by row. Each measurement runs in its own
worker process (in one process PyTorch's spinning OpenMP threads steal this machine's cores from
XLA, and peak memory is per process). Measured:

- limits: copy bandwidth (one thread, STREAM convention 2 x bytes / time: the bound the targets
  use), the read rate of XLA's own matrix-vector product over a 1 GiB matrix (all cores), and
  XLA's float32 GEMM throughput (2048^3);
- short prompts (the 16 chat prompts), batch 1 and 16: decode step from the time difference
  between N_LONG and N_SHORT new tokens (cancels prefill and fixed costs), for the three layer
  layouts (packed, the CPU default where the native kernel builds; per-layer; stacked) and
  transformers `generate`; each step against its
  bound, bytes read per step (weights + the KV cache's real tokens at mid-generation) over the
  copy bandwidth;
- prefill of 16 x 512 tokens: tokens/s and GFLOP/s against the GEMM throughput;
- long context, a prompt of 2,048 and of 8,192 tokens: its prefill (time, and the process's peak
  memory after it; ours in the chunks `generate` picks, and once more in one pass, to show what
  chunking saves), then LONG_STEPS greedy steps from its cache at batch 1 and, copied to 8 rows,
  at batch 8 (transformers: its default attention, a greedy loop over its DynamicCache, which is
  what `generate` runs), each step against its bound; peak memory at the end;
- time to first token from the command line, as a user meets it: `prosocial-jax generate` on
  one chat prompt, plain and guided (a fresh Pv-Arm adapter, safety stage on), run as its own
  process with the persistent compilation cache cold (an empty folder) and then warm (the
  folder the cold run filled): the process's wall time from start to exit and the CLI's own
  decode time, for 1 new token and for a 32-token answer; plain also in the stacked layout.
  `--first-token-only` runs this part alone (about 7 minutes).

Timings are medians (this 2-core VM is noisy).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from prosocial_jax.peak_memory import peak_rss_bytes

N_SHORT, N_LONG = 32, 128
REPEATS = 3
BATCHES = (1, 16)
LAYOUTS = ("packed", "per_layer", "stacked")  # packed: the CPU default where the kernel builds
PREFILL_SHAPE = (16, 512)
CONTEXTS = (2048, 8192)
LONG_BATCHES = (1, 8)
LONG_STEPS = 32  # timed greedy steps at a long context (after 16 warm-up steps)


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Best-of-N STREAM-style copy bandwidth of one thread: (bytes read + bytes written) / time.

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


def xla_limits(repeats: int = 5) -> dict:
    """XLA's matrix-vector read rate over a 1 GiB float32 matrix (bytes / time, all cores) and
    its float32 GEMM throughput (2 n^3 / time at n = 2048): best of N after a warm-up."""
    import jax
    import jax.numpy as jnp

    def best(fn, *args):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        return min(times)

    matrix = jnp.ones((2**16, 2**12), jnp.float32)
    vector = jnp.ones((2**12,), jnp.float32)
    matvec = best(jax.jit(lambda m, v: m @ v), matrix, vector)
    del matrix
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    gemm = best(jax.jit(lambda x, y: x @ y), a, a)
    return {"xla_matvec_read_gb_s": 2**30 / matvec / 1e9,
            "xla_gemm_f32_gflop_s": 2 * n**3 / gemm / 1e9}


def step_figures(step_ms: float, ref_step_ms: float, batch: int, bound_ms: float,
                 ref_name: str) -> dict:
    """A decode step's figures beside a reference's (named `ref_name`) and its bound."""
    return {"step_ms": step_ms, f"{ref_name}_step_ms": ref_step_ms,
            "tokens_per_s": 1e3 * batch / step_ms,
            f"{ref_name}_tokens_per_s": 1e3 * batch / ref_step_ms,
            f"speedup_vs_{ref_name}": ref_step_ms / step_ms,
            "bandwidth_bound_step_ms": bound_ms, "step_over_bound": step_ms / bound_ms}


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


def median_time(fn) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_gb() -> float:
    """This process's peak resident memory (VmHWM) in GB."""
    return peak_rss_bytes() / 1e9


def long_prompts(batch: int, context: int, vocab: int) -> np.ndarray:
    """`batch` prompts of `context` token ids (seeded; the same for both libraries)."""
    return np.random.default_rng(context + batch).integers(100, vocab - 100, (batch, context))


def kv_bytes_per_token(config) -> int:
    """Float32 key and value bytes one token adds to the cache (the benchmarks run float32)."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4


# ---------------------------------------------------------------------------- workers
def jax_short(folder: Path, _: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode, sampling
    from prosocial_jax.models import layers
    from prosocial_jax.models.tokenizer import encode_prompt

    model = pj.load_model(folder, dtype="float32")
    prompts = chat_prompts(max(BATCHES))
    encoded = [encode_prompt(model.tokenizer, p) for p in prompts]
    out: dict = {"weight_bytes": sum(x.nbytes for x in jax.tree.leaves(model.params)),
                 "prompt_tokens": [len(e) for e in encoded],
                 "kv_bytes_per_token": kv_bytes_per_token(model.config)}
    for layout in LAYOUTS:
        params = layers.for_forward(model.params, layout)
        for batch in BATCHES:
            def run(n, rows=prompts[:batch], layout=layout):
                start = time.perf_counter()
                results = pj.generate(model, rows, max_new_tokens=n, batch_size=len(rows),
                                      stop_tokens=[], layer_layout=layout)
                return time.perf_counter() - start, [r.tokens for r in results]
            stats, out[f"tokens_{layout}{batch}"] = decode_stats(run)
            out[f"{layout}{batch}"] = stats
            print(f"jax {layout} batch {batch}: {stats['step_ms']:.1f} ms/step", file=sys.stderr)

        # Compile times: a prefill and one 16-step decode chunk of 16 prompts.
        tokens = jnp.ones((16, 64), jnp.int32)
        mask = jnp.ones((16, 64), bool)
        key = jax.random.key(0)
        start = time.perf_counter()
        prefill = decode.prefill.lower(model.config, params, tokens, mask, key, 16,
                                       max_len=80, num_new=16).compile()
        out[f"compile_prefill_s_{layout}"] = time.perf_counter() - start
        state = prefill(params, tokens, mask, key, 16)
        start = time.perf_counter()
        decode.decode_chunk.lower(model.config, params, state,
                                  sampling.SamplingParams.create(16),
                                  jnp.asarray([-1], jnp.int32), 0, num_steps=16).compile()
        out[f"compile_decode_chunk_s_{layout}"] = time.perf_counter() - start

        # Prefill throughput: 16 x 512 tokens, every token real.
        rows, length = PREFILL_SHAPE
        tokens = jnp.asarray(long_prompts(rows, length, model.config.vocab_size), jnp.int32)
        mask = jnp.ones(tokens.shape, bool)
        run = decode.prefill.lower(model.config, params, tokens, mask, key, 16,
                                   max_len=length + 16, num_new=16).compile()
        out[f"prefill_s_{layout}"] = median_time(
            lambda run=run, params=params, tokens=tokens, mask=mask, key=key:
            jax.block_until_ready(run(params, tokens, mask, key, 16).logits))
    c = model.config
    layer_params = sum(x.size for x in jax.tree.leaves(model.params["layers"]))
    rows, length = PREFILL_SHAPE
    # Products over every prompt token, plus attention scores and weighted values as computed
    # (every query against every slot of its chunk: 2 x 2 x T x T x heads x head_dim per layer).
    out["prefill_flops"] = (2 * layer_params * rows * length
                            + 4 * c.num_layers * rows * length * length * c.num_heads * c.head_dim)
    return out


def torch_short(folder: Path, _: dict) -> dict:
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
    rows, length = PREFILL_SHAPE
    ids = torch.as_tensor(long_prompts(rows, length, model.config.vocab_size))
    with torch.no_grad():
        out["prefill_s"] = median_time(lambda: model(input_ids=ids))
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
        print(f"torch batch {batch}: {out[f'batch{batch}']['step_ms']:.1f} ms/step",
              file=sys.stderr)
    return out


def copied_to_rows(state, rows: int):
    """A one-prompt decode state (per-layer caches: every non-scalar leaf is batch-leading) as
    `rows` identical prompts: each such leaf repeated whole, which keeps a guided state's Pv-Arm
    rows of one prompt adjacent (`guidance.pvarm_rows`); every leaf a new buffer (decoding
    donates its state)."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda x: jnp.concatenate([x] * rows) if x.ndim and rows > 1
                        else x.copy(), state)


def jax_long(folder: Path, setting: dict) -> dict:
    """Prefills one prompt of `context` tokens, times LONG_STEPS greedy steps from it, then from
    its state copied to each of LONG_BATCHES rows; peak memory after the prefill and at the end.
    `one_pass`: prefill in one pass instead of chunks, to compare peak memory (no decoding)."""
    import jax
    import jax.numpy as jnp

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode, sampling
    from prosocial_jax.models import layers

    model = pj.load_model(folder, dtype="float32")
    context = setting["context"]
    params = layers.for_forward(model.params, "auto")
    chunk = decode.auto_prefill_chunk(model.config.num_heads)  # what generate picks
    prompt_len, chunk = decode.prefill_chunks(context, context if setting.get("one_pass")
                                              else chunk)
    tokens = jnp.asarray(long_prompts(1, context, model.config.vocab_size), jnp.int32)
    tokens = jnp.pad(tokens, ((0, 0), (prompt_len - context, 0)))
    mask = jnp.arange(prompt_len)[None, :] >= prompt_len - context
    steps, num_new = 16, 16 + LONG_STEPS
    key = jax.random.key(0)
    prefill = decode.prefill.lower(model.config, params, tokens, mask, key, num_new,
                                   max_len=prompt_len + num_new, num_new=num_new,
                                   chunk=chunk).compile()
    jax.block_until_ready(prefill(params, tokens, mask, key, num_new).logits)  # warm-up
    start = time.perf_counter()
    prompt_state = prefill(params, tokens, mask, key, num_new)
    jax.block_until_ready(prompt_state.logits)
    out = {"prefill_s": time.perf_counter() - start, "prefill_peak_gb": peak_memory_gb(),
           "prefill_chunk": chunk, "cache_slots": prompt_len + num_new}
    if setting.get("one_pass"):
        return out
    for batch in LONG_BATCHES:
        state = copied_to_rows(prompt_state, batch)
        args = (sampling.SamplingParams.create(batch), jnp.asarray([-1], jnp.int32), 0)
        state, _ = decode.decode_chunk(model.config, params, state, *args, num_steps=steps)
        jax.block_until_ready(state.tokens)  # warm-up chunk: compiles
        start = time.perf_counter()
        for _ in range(LONG_STEPS // steps):
            state, _ = decode.decode_chunk(model.config, params, state, *args, num_steps=steps)
        jax.block_until_ready(state.tokens)
        out[f"step_ms{batch}"] = 1e3 * (time.perf_counter() - start) / LONG_STEPS
        out[f"tokens{batch}"] = np.asarray(state.tokens).tolist()
    out["peak_gb"] = peak_memory_gb()
    return out


def torch_long(folder: Path, setting: dict) -> dict:
    """As `jax_long`: transformers' default attention and its DynamicCache, the greedy loop
    `generate` runs (minus its per-step bookkeeping)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    context = setting["context"]
    ids = torch.as_tensor(long_prompts(1, context, model.config.vocab_size))
    out: dict = {"attention": model.config._attn_implementation}
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, logits_to_keep=1)  # warm-up, as for ours
        start = time.perf_counter()
        prompt = model(input_ids=ids, use_cache=True, logits_to_keep=1)  # as generate does
        out["prefill_s"] = time.perf_counter() - start
        out["prefill_peak_gb"] = peak_memory_gb()
        for batch in LONG_BATCHES:
            cache = copy.deepcopy(prompt.cache)
            cache.batch_repeat_interleave(batch)
            token = prompt.logits[:, -1].argmax(-1).repeat(batch)
            tokens = []
            for step in range(16 + LONG_STEPS):
                if step == 16:
                    start = time.perf_counter()
                tokens.append(token.tolist())
                step_out = model(input_ids=token[:, None], cache=cache, use_cache=True)
                cache, token = step_out.cache, step_out.logits[:, -1].argmax(-1)
            out[f"step_ms{batch}"] = 1e3 * (time.perf_counter() - start) / LONG_STEPS
            out[f"tokens{batch}"] = np.asarray(tokens).T.tolist()
            del cache
    out["peak_gb"] = peak_memory_gb()
    return out


WORKERS = {"jax_short": jax_short, "torch_short": torch_short, "jax_long": jax_long,
           "torch_long": torch_long}


def json_from_worker(*argv: str, flag: str = "--to") -> dict:
    """Runs `python *argv FLAG FILE` in a fresh process (its own threads, its own memory peak)
    and returns the JSON it wrote to FILE: how every benchmark here runs each measurement."""
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        subprocess.run([sys.executable, *argv, flag, handle.name], check=True)
        return json.loads(Path(handle.name).read_text())


def run_worker(kind: str, folder: Path, setting: dict | None = None) -> dict:
    return json_from_worker(__file__, "--worker", kind, "--folder", str(folder), "--setting",
                            json.dumps(setting or {}), flag="--out")


# ------------------------------------------------------- time to first token, from the CLI
FIRST_TOKEN_PROMPT = "How can I support a friend who is grieving?"
FIRST_TOKEN_LENGTHS = (1, 32)
WARM_REPEATS = 2
_CLI_DECODE = re.compile(r"1 prompts, (\d+) tokens in ([\d.]+)s")
_CLI_CACHE = re.compile(r"compilation cache: (\d+) program\(s\) read back, (\d+) compiled")


def cli_generate(flags: list[str], cache: Path, new_tokens: int) -> dict:
    """One `prosocial-jax generate` process (with `flags`); its wall time, the CLI's decode
    time (tracing and compilation included, model load not) and what the compilation cache
    did."""
    argv = [sys.executable, "-m", "prosocial_jax.cli", "generate", "--model", "bundled:smollm2",
            "--prompt", FIRST_TOKEN_PROMPT, "--max-new-tokens", str(new_tokens), "--quiet",
            *flags]
    env = {**os.environ, "PROSOCIAL_JAX_COMPILATION_CACHE": str(cache)}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    decoded, cached = _CLI_DECODE.search(done.stderr), _CLI_CACHE.search(done.stderr)
    return {"wall_s": wall, "decode_s": float(decoded[2]), "new_tokens": int(decoded[1]),
            "programs_read_back": int(cached[1]), "programs_compiled": int(cached[2])}


def first_token(tmp: Path) -> dict:
    """Cold (empty cache folder) then warm (medians of WARM_REPEATS) for plain and guided
    decoding at each of FIRST_TOKEN_LENGTHS, and plain in the stacked layout (one scanned layer
    to trace instead of 30 unrolled ones)."""
    import jax

    import prosocial_jax as pj
    from prosocial_jax.models import adapters

    model = pj.load_model("bundled:smollm2")
    adapter = pj.save_adapter(adapters.init_adapter(model.config, adapters.AdapterConfig(),
                                                    jax.random.key(0)), tmp / "adapter")
    results = {}
    modes = {"plain": [], "guided": ["--adapter", str(adapter), "--preference", "empathy=1"],
             "plain-stacked": ["--layer-layout", "stacked"]}
    for mode, flags in modes.items():
        for tokens in FIRST_TOKEN_LENGTHS:
            cache = tmp / f"cache-{mode}-{tokens}"
            cold = cli_generate(flags, cache, tokens)
            warm = [cli_generate(flags, cache, tokens) for _ in range(WARM_REPEATS)]
            results[f"{mode}_{tokens}"] = {
                "cold": cold,
                "warm": {key: statistics.median(run[key] for run in warm) for key in cold}}
            print(f"first token, {mode}, {tokens} new: cold {cold['wall_s']:.1f} s, warm "
                  f"{results[f'{mode}_{tokens}']['warm']['wall_s']:.1f} s", file=sys.stderr)
    return results


# ---------------------------------------------------------------------------- report
def identical_rows(a: list, b: list) -> str:
    return f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--skip-long", action="store_true",
                        help="leave out the long-context part (about 10 of the ~15 minutes)")
    parser.add_argument("--first-token-only", action="store_true",
                        help="only the CLI's time to first token, compilation cache cold and "
                        "warm (about 5 minutes)")
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--setting", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        args.out.write_text(json.dumps(WORKERS[args.worker](args.folder, args.setting)))
        return

    import prosocial_jax as pj

    if args.first_token_only:
        with tempfile.TemporaryDirectory() as tmp:
            results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                       "first_token": first_token(Path(tmp))}
        report_first_token(results["first_token"])
        write_results(args.out, results)
        return
    with tempfile.TemporaryDirectory() as tmp:
        first_token_runs = first_token(Path(tmp))
        folder = pj.save_model(pj.load_model("bundled:smollm2", dtype="float32"),
                               Path(tmp) / "smollm2")
        bandwidth = copy_bandwidth()
        limits = xla_limits()
        ours = run_worker("jax_short", folder)
        theirs = run_worker("torch_short", folder)
        long_runs = {}
        for context in () if args.skip_long else CONTEXTS:
            long_runs[context] = (run_worker("jax_long", folder, {"context": context}),
                                  run_worker("torch_long", folder, {"context": context}))
            print(f"long {context}: jax {long_runs[context][0]['step_ms1']:.1f} ms/step, torch "
                  f"{long_runs[context][1]['step_ms1']:.1f}", file=sys.stderr)
        if not args.skip_long:
            one_pass = run_worker("jax_long", folder, {"context": CONTEXTS[-1], "one_pass": True})

    weights, per_token = ours["weight_bytes"], ours["kv_bytes_per_token"]
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised), float32",
        "weight_bytes": weights,
        "limits": {"copy_bandwidth_gb_s": bandwidth / 1e9, **limits},
        "compile_s": {layout: {"prefill": ours[f"compile_prefill_s_{layout}"],
                               "decode_chunk_16_steps": ours[f"compile_decode_chunk_s_{layout}"]}
                      for layout in LAYOUTS},
        "decode": {}, "prefill": {}, "long_context": {}, "first_token": first_token_runs,
    }
    for batch in BATCHES:
        ref = theirs[f"batch{batch}"]["step_ms"]
        # Bytes a step must read: the weights and the cache's real tokens at mid-generation.
        context = np.mean(ours["prompt_tokens"][:batch]) + (N_SHORT + N_LONG) / 2
        bound = 1e3 * (weights + batch * context * per_token) / bandwidth
        entry = {"transformers_step_ms": ref, "bandwidth_bound_step_ms": bound}
        for layout in LAYOUTS:
            step = ours[f"{layout}{batch}"]["step_ms"]
            entry[layout] = {"step_ms": step, "tokens_per_s": 1e3 * batch / step,
                             "speedup_vs_transformers": ref / step,
                             "step_over_bound": step / bound,
                             "identical_rows": identical_rows(ours[f"tokens_{layout}{batch}"],
                                                              theirs[f"tokens{batch}"])}
        results["decode"][str(batch)] = entry
    rows, length = PREFILL_SHAPE
    for layout in LAYOUTS:
        seconds = ours[f"prefill_s_{layout}"]
        gflop_s = ours["prefill_flops"] / seconds / 1e9
        results["prefill"][layout] = {
            "tokens_per_s": rows * length / seconds, "gflop_s": gflop_s,
            "fraction_of_gemm": gflop_s / limits["xla_gemm_f32_gflop_s"]}
    results["prefill"]["transformers_tokens_per_s"] = rows * length / theirs["prefill_s"]
    for context, (mine, ref) in long_runs.items():
        for batch in LONG_BATCHES:
            read = weights + batch * (context + 16 + LONG_STEPS / 2) * per_token
            bound = 1e3 * read / bandwidth
            results["long_context"][f"{context}x{batch}"] = {
                **step_figures(mine[f"step_ms{batch}"], ref[f"step_ms{batch}"], batch, bound,
                               "transformers"),
                "identical_rows": identical_rows(mine[f"tokens{batch}"], ref[f"tokens{batch}"])}
        results["long_context"][f"{context}_memory"] = {
            "prefill_s": mine["prefill_s"], "transformers_prefill_s": ref["prefill_s"],
            "prefill_chunk": mine["prefill_chunk"], "transformers_attention": ref["attention"],
            "peak_gb_after_prefill": mine["prefill_peak_gb"],
            "transformers_peak_gb_after_prefill": ref["prefill_peak_gb"],
            "peak_gb": mine["peak_gb"], "transformers_peak_gb": ref["peak_gb"]}
    if long_runs:
        results["long_context"]["one_pass_prefill"] = {
            "context": CONTEXTS[-1], "prefill_s": one_pass["prefill_s"],
            "peak_gb_after_prefill": one_pass["prefill_peak_gb"]}
    print(json.dumps(results, indent=2))
    report(results)
    write_results(args.out, results)


def report(results: dict) -> None:
    lim = results["limits"]
    print(f"\ncopy bandwidth {lim['copy_bandwidth_gb_s']:.1f} GB/s (one thread); XLA matvec "
          f"read {lim['xla_matvec_read_gb_s']:.1f} GB/s; XLA f32 GEMM "
          f"{lim['xla_gemm_f32_gflop_s']:.0f} GFLOP/s; weights "
          f"{results['weight_bytes'] / 1e6:.0f} MB")
    for batch, entry in results["decode"].items():
        for layout in LAYOUTS:
            e = entry[layout]
            print(f"batch {batch} {layout}: {e['step_ms']:.1f} ms/step = "
                  f"{e['step_over_bound']:.2f}x the bound of {entry['bandwidth_bound_step_ms']:.1f}"
                  f" ms; {e['speedup_vs_transformers']:.2f}x transformers "
                  f"({entry['transformers_step_ms']:.1f} ms); identical rows {e['identical_rows']}")
    for layout in LAYOUTS:
        p = results["prefill"][layout]
        print(f"prefill 16 x 512 {layout}: {p['tokens_per_s']:.0f} tok/s, {p['gflop_s']:.0f} "
              f"GFLOP/s = {p['fraction_of_gemm']:.0%} of the GEMM rate")
    print(f"prefill transformers: {results['prefill']['transformers_tokens_per_s']:.0f} tok/s")
    long = results["long_context"]
    for context in CONTEXTS:
        for batch in LONG_BATCHES:
            e = long.get(f"{context}x{batch}")
            if e is None:
                continue
            print(f"context {context} x batch {batch}: {e['step_ms']:.1f} ms/step "
                  f"({e['step_over_bound']:.2f}x bound {e['bandwidth_bound_step_ms']:.1f} ms) vs "
                  f"transformers {e['transformers_step_ms']:.1f}: "
                  f"{e['speedup_vs_transformers']:.2f}x; identical rows {e['identical_rows']}")
        m = long.get(f"{context}_memory")
        if m:
            print(f"context {context}: prefill of one prompt {m['prefill_s']:.1f} s (chunks of "
                  f"{m['prefill_chunk']}) vs transformers {m['transformers_prefill_s']:.1f} s; "
                  f"peak memory after it {m['peak_gb_after_prefill']:.2f} vs "
                  f"{m['transformers_peak_gb_after_prefill']:.2f} GB, at the end (8 rows "
                  f"decoded) {m['peak_gb']:.2f} vs {m['transformers_peak_gb']:.2f} GB")
    if "one_pass_prefill" in long:
        e = long["one_pass_prefill"]
        print(f"context {e['context']} prefilled in one pass: {e['prefill_s']:.1f} s, peak "
              f"memory {e['peak_gb_after_prefill']:.2f} GB")
    for layout, c in results["compile_s"].items():
        print(f"compile {layout}: prefill {c['prefill']:.1f} s, 16-step decode chunk "
              f"{c['decode_chunk_16_steps']:.1f} s")
    report_first_token(results["first_token"])


def report_first_token(runs: dict) -> None:
    for name, run in runs.items():
        mode, tokens = name.rsplit("_", 1)
        cold, warm = run["cold"], run["warm"]
        print(f"prosocial-jax generate, {mode}, {tokens} new token(s): cold cache "
              f"{cold['wall_s']:.1f} s (decode {cold['decode_s']:.1f} s, "
              f"{cold['programs_compiled']} programs compiled), warm {warm['wall_s']:.1f} s "
              f"(decode {warm['decode_s']:.1f} s, {warm['programs_read_back']:.0f} read back)")


if __name__ == "__main__":
    main()
