"""Guided decoding of 32 prompts by one process and by two cooperating processes, side by side.

    .venv/bin/python benchmarks/multiprocess_decode.py --out benchmarks/results/multiprocess.json

SmolLM2-135M-Instruct (bundled) guides itself through a random PBLoRA adapter (safety stage on,
w = 1, greedy, per-row preferences). Three runs, each in fresh processes:

  one       1 process, 1 device, no mesh
  one-2dev  1 process, 2 CPU devices, a 2x1 mesh (rows split over "data")
  two       2 processes x 1 device (launch/local.sh), the same 2x1 mesh over both processes

Each decodes the 32 prompts twice per length (16 and 48 new tokens, no early stop); the step time
is the median difference over the extra 32 tokens, so prefill and compilation cancel. "two"
against "one-2dev" is the same program on the same mesh: the difference per step is what the
cross-process collectives (gloo over 127.0.0.1) cost. On a 2-core machine the processes share
the cores, so the ratio is reported, not a speed-up; the tokens must be the same in all three.
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

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, SHORT, LONG, REPEATS = 32, 16, 48, 3


def worker(out: Path, mesh: str | None) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import prosocial_jax as pj
    from prosocial_jax import processes
    from prosocial_jax.cli.common import initialize_distributed
    from prosocial_jax.models import adapters

    initialize_distributed(argparse.Namespace(distributed=False, distributed_timeout=120))
    model = pj.load_model("bundled:smollm2", mesh=mesh)
    fresh = adapters.init_adapter(model.config, adapters.AdapterConfig(), jax.random.key(0))
    rng = np.random.RandomState(0)
    adapter = adapters.Adapter(fresh.config, jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.02, jnp.float32), fresh.params))
    prompts = [[{"role": "user", "content": f"Question {i}: how do I keep a friendship going "
                 f"when we live {i + 2} hours apart?"}] for i in range(PROMPTS)]
    kwargs = dict(adapter=adapter, preferences=rng.dirichlet(np.ones(6), PROMPTS),
                  guidance=1.0, safety_margin=3.0, stop_tokens=[], batch_size=PROMPTS)

    def run(n: int) -> tuple[float, list]:
        start = time.perf_counter()
        results = pj.generate(model, prompts, max_new_tokens=n, **kwargs)
        return time.perf_counter() - start, [r.tokens for r in results]

    run(SHORT), run(LONG)  # compile both
    short = [run(SHORT)[0] for _ in range(REPEATS)]
    long_, tokens = zip(*(run(LONG) for _ in range(REPEATS)))
    step = (statistics.median(long_) - statistics.median(short)) / (LONG - SHORT)
    if processes.is_writer():
        out.write_text(json.dumps({"step_ms": 1e3 * step, "tokens_per_s": PROMPTS / step,
                                   "processes": jax.process_count(),
                                   "devices": jax.device_count(), "tokens": tokens[0]}))


def run(kind: str, folder: Path) -> dict:
    out = folder / f"{kind}.json"
    script = [sys.executable, __file__, "--worker", str(out)]
    env = {**os.environ, "TQDM_DISABLE": "1", "XLA_FLAGS": ""}
    if kind == "one":
        command = [*script]
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    elif kind == "one-2dev":
        command = [*script, "--mesh", "2x1"]
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    else:
        command = ["bash", str(ROOT / "launch" / "local.sh"), "2", *script, "--mesh", "2x1"]
        env.update(DEVICES_PER_PROCESS="1", LOG_DIR=str(folder / "logs"))
    subprocess.run(command, env=env, check=True, timeout=1800)
    result = json.loads(out.read_text())
    print(f"{kind}: {result['step_ms']:.1f} ms/step, {result['tokens_per_s']:.0f} tokens/s",
          file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mesh", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.mesh)
        return
    with tempfile.TemporaryDirectory() as folder:
        runs = {kind: run(kind, Path(folder)) for kind in ("one", "one-2dev", "two")}
    same = len({json.dumps(r.pop("tokens")) for r in runs.values()}) == 1
    overhead = runs["two"]["step_ms"] - runs["one-2dev"]["step_ms"]
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "prompts": PROMPTS, "runs": runs, "same_tokens": same,
               "two_over_one_2dev": runs["two"]["step_ms"] / runs["one-2dev"]["step_ms"],
               "two_over_one": runs["two"]["step_ms"] / runs["one"]["step_ms"],
               "collective_overhead_ms_per_step": overhead}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"\n2 processes: {runs['two']['tokens_per_s']:.0f} tokens/s; 1 process on the same 2x1 "
          f"mesh: {runs['one-2dev']['tokens_per_s']:.0f}; 1 process, 1 device: "
          f"{runs['one']['tokens_per_s']:.0f}. Cross-process collectives: {overhead:+.1f} ms per "
          f"step ({results['two_over_one_2dev']:.2f}x). Same tokens: {same}")


if __name__ == "__main__":
    main()
