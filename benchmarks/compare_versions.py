"""Two checkouts of prosocial_jax side by side: plain and guided decode step times.

Absolute figures on a shared VM move with its state (copy bandwidth has been measured anywhere
from 21 to 43 GB/s), so a change's effect on speed is measured against the code before it, in
the same VM state, alternating the two checkouts:

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/compare_versions.py /tmp/before . --rounds 2

Each checkout runs in its own process (PYTHONPATH=checkout). Per-step time = (time for LONG new
tokens - time for SHORT) / (LONG - SHORT), greedy, no early stop, median of `--repeats`.
SmolLM2-135M-Instruct (float32); guided = the same model as Pv-Arm backbone with a random
adapter, preference empathy=1, safety stage on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time
import jax, numpy as np
import prosocial_jax as pj
from prosocial_jax.models import adapters
repeats, short, long = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = pj.load_model("bundled:smollm2")
reward = pj.load_model("bundled:smollm2")
init = getattr(adapters, "init_adapter", None) or getattr(adapters, "init")  # before: `init`
adapter = init(model.config, pj.AdapterConfig(), jax.random.key(0))
adapter = type(adapter)(adapter.config, jax.tree.map(lambda x: x + 0.01, adapter.params))
results = {}
for guided in (False, True):
    extra = dict(adapter=adapter, reward=reward, preference="empathy=1") if guided else {}
    for batch in (1, 16):
        prompts = [f"Tell me about topic {i}." for i in range(batch)]
        def run(n):
            start = time.perf_counter()
            pj.generate(model, prompts, max_new_tokens=n, stop_tokens=[], **extra)
            return time.perf_counter() - start
        run(short), run(long)  # compile both lengths
        steps = [(run(long) - run(short)) / (long - short) * 1000 for _ in range(repeats)]
        results[f"{'guided' if guided else 'plain'} batch {batch}"] = float(np.median(steps))
print(json.dumps(results))
"""


def measure(checkout: Path, repeats: int, short: int, long: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", WORKER, str(repeats), str(short), str(long)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="checkout of the code before the change")
    parser.add_argument("after", type=Path, help="checkout of the code after it")
    parser.add_argument("--rounds", type=int, default=2, help="alternations before/after")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--short", type=int, default=16)
    parser.add_argument("--long", type=int, default=48)
    parser.add_argument("--out", type=Path, help="write all rounds as JSON")
    args = parser.parse_args()
    rounds = []
    for index in range(args.rounds):
        for name, checkout in (("before", args.before), ("after", args.after)):
            result = measure(checkout, args.repeats, args.short, args.long)
            rounds.append({"round": index, "code": name, "ms_per_step": result})
            print(name, ", ".join(f"{k}: {v:.1f} ms" for k, v in result.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
