"""Where a decode step's time goes on this CPU: XLA's own per-operation trace of decode steps.

    .venv/bin/python benchmarks/decode_profile.py --out benchmarks/results/decode_profile.json

SmolLM2-135M-Instruct float32, the CPU default layout (packed: the native kernel, where it
builds), greedy: a 256-token prompt prefilled, then 32 decode steps (two 16-step chunks, after
a warm-up chunk) traced with `jax.profiler` at batch 1 and 16; then the same for guided steps
with the safety stage on, as `guided_decode_speed.py` runs them (base model and Pv-Arm backbone
in two copies of the weights, a random PBLoRA adapter, the chat prompts; `--skip-guided` leaves
them out). XLA:CPU records every operation it runs (each fused loop, each product, each
native-kernel call) as a trace event; the events are summed by kind:

- products with a weight matrix: events whose operation reads one of the layer weights or the
  unembedding (matched by the operand shapes in the compiled program's HLO), of either model;
- the PBLoRA updates' products (`adapters.delta`, by its named scope);
- other products (attention's q K^T and probs x V);
- everything else (norms, rotary, softmax, masks, cache writes, sampling), with their count;
- the rest of the wall time: between operations (dispatch, the while loop's control).

Beside them, the time the weights take to read at the one-thread copy bandwidth measured in the
same run (the decode benchmarks' bound). It is the profile behind "Benchmark: plain decoding
speed" and the guided misses in the README.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from decode_speed import chat_prompts, copy_bandwidth, write_results

BATCHES = (1, 16)
STEPS = 16
TRACED_CHUNKS = 2


def instruction_kinds(hlo_text: str, weight_shapes: set[str]) -> dict[str, str]:
    """Each instruction of the compiled program -> its kind: "weight product" (a fused loop or
    product that reads a weight matrix), "attention product" (other products), or "other".
    Control flow (while, conditional, call) is left out: its trace event spans what it runs."""
    computations: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
    shapes: dict[str, str] = {}
    computation = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            computation = header.group(1)
            continue
        match = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$", line)
        if match:
            name, shape, opcode, rest = match.groups()
            shapes[name] = re.sub(r"\{.*", "", shape)
            computations[computation].append((name, opcode, rest))

    def reads_weight(operands: str) -> bool:
        names = re.findall(r"%([\w.\-]+)", operands.split(")")[0])
        return any(shapes.get(n) in weight_shapes for n in names)

    def fused(called: str) -> tuple[bool, bool]:  # (reads a weight, has a product)
        body = computations.get(called, [])
        return (any(op == "parameter" and shapes[n] in weight_shapes for n, op, _ in body),
                any(op in ("dot", "convolution") for _, op, _ in body))

    def projection(rest: str, called) -> str:  # which weight: its name in the op metadata
        texts = [rest] + [r for _, _, r in computations.get(called.group(1), [])] if called \
            else [rest]
        for text in texts:
            named = re.search(r"/(\w+_proj)/", text)
            if named:
                return named.group(1)
        return "unembedding (and embedding lookup)"

    kinds: dict[str, str] = {}
    for body in computations.values():
        for name, opcode, rest in body:
            if opcode in ("while", "conditional", "call"):
                continue
            weight, product = False, opcode in ("dot", "convolution", "custom-call")
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            if called:
                weight, has_dot = fused(called.group(1))
                product = product or has_dot
            weight = weight or (product and reads_weight(rest))
            # The packed layout's products are custom calls to the native kernel, whose
            # weight operand is a packed strip array rather than the weight's own shape.
            weight = weight or (opcode == "custom-call" and "prosocial_rows_matmul" in rest)
            # A fused loop that reads a weight is a product with it, dot or not (XLA may turn
            # a one-row product into a multiply-reduce); the embedding lookup counts too.
            if weight:
                kinds[name] = f"weight product: {projection(rest, called)}"
            elif product and _from_adapter(rest, called and computations.get(called.group(1))):
                kinds[name] = "adapter (PBLoRA) product"
            else:
                kinds[name] = "attention product" if product else "other"
    return kinds


def _from_adapter(rest: str, body) -> bool:
    """Whether an instruction (or the fusion it calls) computes the Pv-Arm's PBLoRA update:
    `adapters.delta` runs under the named scope "pblora", which its op_name carries."""
    return any("/pblora/" in text for text in [rest] + [r for _, _, r in body or ()])


def module_of(hlo_text: str) -> dict[str, str]:
    """Each instruction -> the model code that produced it, from its `op_name` metadata: the
    Flax module path without the jit prefix and control flow, the layer's index and the
    primitive (e.g. "Decoder/DecoderLayer/attn/k_norm"); how the "other" operations are told
    apart."""
    modules = {}
    for match in re.finditer(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*op_name=\"([^\"]*)\"", hlo_text,
                             re.MULTILINE):
        parts = [re.sub(r"_\d+$", "", p) for p in match.group(2).split("/")[1:-1]]
        model = next((i for i, p in enumerate(parts) if p.startswith("Decoder")), 0)
        modules[match.group(1)] = "/".join(parts[model:]) or "(top)"  # no control flow
    return modules


def _trace_events(trace_dir: str) -> list[dict]:
    """The events of the trace `jax.profiler` wrote into `trace_dir`."""
    trace_file = next(Path(trace_dir).rglob("*.trace.json.gz"))
    return json.loads(gzip.decompress(trace_file.read_bytes()))["traceEvents"]


def _traced(run_chunks) -> tuple[list[dict], float]:
    """Runs `run_chunks()` (TRACED_CHUNKS decode chunks, blocking at the end) under XLA's
    profiler; returns the trace events and the wall time."""
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        start = time.perf_counter()
        run_chunks()
        wall = time.perf_counter() - start
        jax.profiler.stop_trace()
        return _trace_events(trace_dir), wall


def _summary(hlo_text: str, events: list[dict], wall: float, models: list, bandwidth: float
             ) -> dict:
    """Trace events of TRACED_CHUNKS x STEPS decode steps, summed by kind per step; `models`:
    the models whose weights a step reads (the base model, and the Pv-Arm backbone when
    guided), which share one architecture."""
    import jax

    config, params = models[0].config, models[0].params
    shapes = {f"f32[{','.join(map(str, x.shape[1:]))}]"
              for x in jax.tree.leaves(params["layers"]) if x.ndim == 3}
    shapes.add(f"f32[{config.vocab_size},{config.hidden_size}]")
    kinds = instruction_kinds(hlo_text, shapes)
    modules = module_of(hlo_text)
    steps = STEPS * TRACED_CHUNKS
    totals: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    other_by_module: dict[str, float] = collections.Counter()
    for event in events:
        kind = kinds.get(event.get("name"))
        if event.get("ph") == "X" and kind is not None:
            totals[kind] += event["dur"] / 1e3  # microseconds -> ms
            counts[kind] += 1
            if kind == "other":
                other_by_module[modules.get(event["name"], "(unnamed)")] += event["dur"] / 1e3
    per_step = {kind: {"ms": totals[kind] / steps, "ops": counts[kind] / steps}
                for kind in sorted(totals)}
    # Each weight's bytes (all layers), to set its products' time against reading it; the
    # events of one weight cover every model's layers.
    layer_bytes = {name: sum(x.nbytes for x in jax.tree.leaves(group[name]))
                   for group in params["layers"].values() for name in group}
    for kind, entry in per_step.items():
        name = kind.split(": ")[-1]
        if name in layer_bytes:  # bytes of the layers its events covered (a trace may miss some)
            nbytes = layer_bytes[name] / config.num_layers * entry["ops"]
            entry["read_gb_s"] = nbytes / entry["ms"] / 1e6
        elif kind.startswith("weight product"):  # each model reads its table once a step
            entry["read_gb_s"] = (len(models) * params["embed"]["embedding"].nbytes
                                  / entry["ms"] / 1e6)
    weight_bytes = sum(x.nbytes for model in models for x in jax.tree.leaves(model.params))
    products = sum(v["ms"] for k, v in per_step.items() if k.startswith("weight product"))
    return {"step_ms": 1e3 * wall / steps, "weight_bytes": weight_bytes,
            "weights_read_ms": 1e3 * weight_bytes / bandwidth, "weight_products_ms": products,
            "operations_ms": sum(v["ms"] for v in per_step.values()), "per_step": per_step,
            "other_by_module_ms": {m: t / steps for m, t in sorted(
                other_by_module.items(), key=lambda kv: -kv[1])}}


def profile(batch: int, bandwidth: float, model_path: str = "bundled:smollm2",
            prompts: list[list[int]] | None = None) -> dict:
    """Traces decode steps of `model_path` at `batch` rows: the chat prompts (or token-id
    `prompts`, one per row), each left-padded to 256 slots."""
    import jax
    import jax.numpy as jnp

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode, sampling
    from prosocial_jax.models import layers
    from prosocial_jax.models.tokenizer import encode_prompt

    model = pj.load_model(model_path, dtype="float32")
    params = layers.for_forward(model.params, "auto")
    # Prompts: the chat prompts, each left-padded to 256 slots.
    encoded = prompts or [encode_prompt(model.tokenizer, p)[:256] for p in chat_prompts(batch)]
    tokens = np.zeros((batch, 256), np.int32)
    mask = np.zeros((batch, 256), bool)
    for row, ids in enumerate(encoded):
        tokens[row, 256 - len(ids):], mask[row, 256 - len(ids):] = ids, True
    num_new = STEPS * (TRACED_CHUNKS + 1)
    key = jax.random.key(0)
    state = decode.prefill(model.config, params, jnp.asarray(tokens), jnp.asarray(mask), key,
                           num_new, max_len=256 + num_new, num_new=num_new)
    args = (sampling.SamplingParams.create(batch), jnp.asarray([-1], jnp.int32), 0)
    compiled = decode.decode_chunk.lower(model.config, params, state, *args,
                                         num_steps=STEPS).compile()
    state, _ = decode.decode_chunk(model.config, params, state, *args, num_steps=STEPS)
    jax.block_until_ready(state.tokens)  # warm-up

    def run_chunks():
        nonlocal state
        for _ in range(TRACED_CHUNKS):
            state, _ = decode.decode_chunk(model.config, params, state, *args,
                                           num_steps=STEPS)
        jax.block_until_ready(state.tokens)

    events, wall = _traced(run_chunks)
    return {"batch": batch, **_summary(compiled.as_text(), events, wall, [model], bandwidth)}


def guided_profile(batch: int, bandwidth: float) -> dict:
    """Traces guided decode steps with the safety stage on, as `guided_decode_speed.py` runs
    them: SmolLM2 as the base model and, in a second copy of its weights, as the Pv-Arm
    backbone with a random PBLoRA adapter, `batch` chat prompts, through `generate` itself. Its
    decode chunks are intercepted: the first (compilation, warm-up) runs untraced, the next
    TRACED_CHUNKS under the profiler."""
    import jax
    from guided_decode_speed import random_adapter, uniform

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode

    base = pj.load_model("bundled:smollm2", dtype="float32")
    reward = pj.load_model("bundled:smollm2", dtype="float32")  # its own copy of the weights
    adapter = random_adapter(reward)
    original = decode.decode_chunk
    seen: dict = {"chunks": 0}

    def intercepted(*args, **kwargs):
        index = seen["chunks"]
        seen["chunks"] += 1
        if index == 0:  # the program generate runs, lowered once more to read its HLO
            seen["hlo"] = original.lower(*args, **kwargs).compile().as_text()
        if index == 1:  # the warm-up chunk done: trace from here
            jax.block_until_ready(args[2])
            trace_dir = tempfile.mkdtemp()
            jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
            seen["trace"], seen["start"] = trace_dir, time.perf_counter()
        out = original(*args, **kwargs)
        if index == TRACED_CHUNKS:
            jax.block_until_ready(out)
            seen["wall"] = time.perf_counter() - seen["start"]
            jax.profiler.stop_trace()
        return out

    decode.decode_chunk = intercepted
    try:
        pj.generate(base, chat_prompts(batch), max_new_tokens=(TRACED_CHUNKS + 1) * STEPS,
                    chunk_size=STEPS, batch_size=batch, stop_tokens=[], adapter=adapter,
                    reward=reward, preference=uniform(adapter), guidance=1.0,
                    safety_margin=3.0)
    finally:
        decode.decode_chunk = original
    events = _trace_events(seen["trace"])
    shutil.rmtree(seen["trace"])
    summary = _summary(seen["hlo"], events, seen["wall"], [base, reward], bandwidth)
    summary["adapter_bytes"] = sum(x.nbytes for x in jax.tree.leaves(adapter.params))
    return {"batch": batch, **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--skip-guided", action="store_true",
                        help="leave out the guided steps (safety stage on)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bandwidth = copy_bandwidth()
    results = {"model": "SmolLM2-135M-Instruct float32, the default (packed) layout",
               "cpus": os.cpu_count(), "copy_bandwidth_gb_s": bandwidth / 1e9,
               "plain (256-slot prompts)": [profile(batch, bandwidth) for batch in BATCHES]}
    if not args.skip_guided:
        results["guided, safety stage on (chat prompts, two copies)"] = [
            guided_profile(batch, bandwidth) for batch in BATCHES]
    print(json.dumps(results, indent=2))
    print(f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s (one thread)", file=sys.stderr)
    for title, entries in results.items():
        if not isinstance(entries, list):
            continue
        print(title, file=sys.stderr)
        for entry in entries:
            print(f"batch {entry['batch']}: {entry['step_ms']:.1f} ms/step traced; operations "
                  f"{entry['operations_ms']:.1f} ms (two threads may overlap them), of which "
                  f"weight products {entry['weight_products_ms']:.1f} ms against "
                  f"{entry['weights_read_ms']:.1f} ms to read the weights", file=sys.stderr)
            for kind, v in entry["per_step"].items():
                rate = f", {v['read_gb_s']:.1f} GB/s" if "read_gb_s" in v else ""
                print(f"  {kind}: {v['ms']:.2f} ms ({v['ops']:.0f} ops{rate})", file=sys.stderr)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
