"""Harm vector + global top-k trimming on a synthetic 1B-parameter model: time and peak memory,
prosocial_jax (leaf by leaf, exact bitwise threshold search) against the flat-array approach of
earlier task-vector code (concatenate everything, then `torch.kthvalue` or `np.partition`).

    .venv/bin/python benchmarks/harm_vector_memory.py --out benchmarks/results/harm_vector.json

bfloat16 weights (2 GB per model): in float32 the flat torch path needs ~6 models' worth of
memory at once (base, harmful, tau, flat copy, |flat|, kthvalue's work copy), more than this
24 GiB machine has. Each method runs in a fresh worker process that builds the same two models
(seeded) and reports its peak resident memory (ru_maxrss) and the time of tau + trimming alone.
All methods keep the same entries (checked via the kept count and the threshold).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from decode_speed import json_from_worker

from prosocial_jax.peak_memory import peak_rss_bytes, reset_peak_rss

D, F, LAYERS, VOCAB = 2048, 5632, 18, 32000  # ~0.99B parameters, Llama-like shapes
TOP_K = 0.1


def shapes() -> dict[str, tuple[int, ...]]:
    return {"embed": (VOCAB, D), "q": (LAYERS, D, D), "k": (LAYERS, D, D), "v": (LAYERS, D, D),
            "o": (LAYERS, D, D), "gate": (LAYERS, F, D), "up": (LAYERS, F, D),
            "down": (LAYERS, D, F), "norms": (LAYERS, 2, D)}


def jax_models():
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    base, harmful = {}, {}
    for i, (name, shape) in enumerate(shapes().items()):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        base[name] = jax.random.normal(k1, shape, jnp.bfloat16)
        # A fine-tune's change: small and heavy-tailed (the cube of a normal).
        harmful[name] = base[name] + (0.01 * jax.random.normal(k2, shape, jnp.float32) ** 3
                                      ).astype(jnp.bfloat16)
        jax.block_until_ready((base[name], harmful[name]))
    return base, harmful


def worker_ours() -> dict:
    import jax

    from prosocial_jax.direg import harm

    base, harmful = jax_models()
    model_bytes = sum(x.nbytes for x in jax.tree.leaves(base))
    before = reset_peak_rss()
    start = time.perf_counter()
    tau = harm.task_vector(base, harmful, donate_harmful=True)
    trimmed, result = harm.trim(tau, TOP_K, donate=True)
    jax.block_until_ready(trimmed)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "peak_rss": peak_rss_bytes(), "rss_before": before,
            "model_bytes": model_bytes, "kept": result.kept, "threshold": result.threshold}


def worker_torch_flat() -> dict:
    import numpy as np
    import torch

    base, harmful = (
        {k: torch.from_numpy(np.asarray(v.astype("float32"))).to(torch.bfloat16)
         for k, v in tree.items()} for tree in _numpy_models())
    model_bytes = sum(t.numel() * t.element_size() for t in base.values())
    before = reset_peak_rss()
    start = time.perf_counter()
    tau = {k: harmful[k] - base[k] for k in base}  # as task-vector code does: a third model
    del harmful
    flat = torch.cat([t.flatten() for t in tau.values()])
    n = flat.numel()
    keep = int(TOP_K * n)
    threshold = flat.abs().float().kthvalue(n - keep + 1).values  # the keep-th largest
    trimmed = {k: torch.where(t.abs().float() >= threshold, t, torch.zeros((), dtype=t.dtype))
               for k, t in tau.items()}
    elapsed = time.perf_counter() - start
    kept = sum(int((t != 0).sum()) for t in trimmed.values())
    return {"seconds": elapsed, "peak_rss": peak_rss_bytes(), "rss_before": before,
            "model_bytes": model_bytes, "kept": kept, "threshold": float(threshold)}


def worker_numpy_flat() -> dict:
    import numpy as np

    base, harmful = _numpy_models()
    model_bytes = sum(v.nbytes for v in base.values())
    before = reset_peak_rss()
    start = time.perf_counter()
    tau = {k: harmful[k] - base[k] for k in base}
    del harmful
    flat = np.concatenate([np.abs(t.astype(np.float32)).ravel() for t in tau.values()])
    n = flat.size
    keep = int(TOP_K * n)
    threshold = np.partition(flat, n - keep)[n - keep]
    trimmed = {k: np.where(np.abs(t.astype(np.float32)) >= threshold, t, 0).astype(t.dtype)
               for k, t in tau.items()}
    elapsed = time.perf_counter() - start
    kept = sum(int(np.count_nonzero(t)) for t in trimmed.values())
    return {"seconds": elapsed, "peak_rss": peak_rss_bytes(), "rss_before": before,
            "model_bytes": model_bytes, "kept": kept, "threshold": float(threshold)}


def _numpy_models():
    """The same seeded models as numpy bfloat16 arrays (built leaf by leaf with jax)."""
    import jax
    import numpy as np

    base, harmful = jax_models()
    out_base, out_harmful = {}, {}
    for name in list(base):
        out_base[name] = np.asarray(base.pop(name))
        out_harmful[name] = np.asarray(harmful.pop(name))
    jax.clear_caches()
    return out_base, out_harmful


WORKERS = {"prosocial_jax": worker_ours, "torch.kthvalue (flat)": worker_torch_flat,
           "np.partition (flat)": worker_numpy_flat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.result.write_text(json.dumps(WORKERS[args.worker]()))
        return
    results = {name: json_from_worker(__file__, "--worker", name, flag="--result")
               for name in WORKERS}
    model_bytes = results["prosocial_jax"]["model_bytes"]
    two = 2 * model_bytes
    print(f"two models: {two / 2**30:.2f} GiB (bfloat16, "
          f"{model_bytes // 2 / 1e9:.2f}B parameters each)")
    flat_fastest = min(r["seconds"] for n, r in results.items() if n != "prosocial_jax")
    for name, r in results.items():
        r["peak_over_two_models"] = r["peak_rss"] / two
        print(f"{name:24s} {r['seconds']:7.1f} s   peak RSS {r['peak_rss'] / 2**30:6.2f} GiB "
              f"= {r['peak_over_two_models']:.2f}x two models   kept {r['kept']}   "
              f"threshold {r['threshold']:.6g}")
    ours = results["prosocial_jax"]
    summary = {"time_over_fastest_flat": ours["seconds"] / flat_fastest,
               "peak_over_two_models": ours["peak_over_two_models"]}
    print(f"prosocial_jax: {summary['time_over_fastest_flat']:.2f}x the fastest flat method's "
          f"time (target <= 2x), peak {summary['peak_over_two_models']:.2f}x two models "
          f"(target <= 1.5x)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": results, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
