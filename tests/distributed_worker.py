"""Every stage of the pipeline on one mesh, as a program that N processes run together.

`tests/test_distributed_run.py` starts it with `launch/local.sh 2` (2 processes x 4 CPU devices,
one global mesh) and also calls `run_stages` in its own single process (8 devices, the same
mesh); the two must agree. Process 0 writes the results as one .npz per mesh.

    python tests/distributed_worker.py --llama DIR --chat DIR --meshes 2x4,4x2 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import jax
import numpy as np
from helpers import (
    ARM_ADAPTER,
    pair_sequence,
    random_adapter,
    synthetic_pairs,
)

import prosocial_jax as pj
from prosocial_jax.direg.edit import edit
from prosocial_jax.direg.finetune import FinetuneSettings, finetune
from prosocial_jax.evaluation.judges.base import JudgeInput
from prosocial_jax.evaluation.judges.rubric import RubricJudge
from prosocial_jax.models import sharding
from prosocial_jax.pvarm.train import ArmSettings, train_arm

PROMPTS = [[1, 5, 9, 13], [1, 7], [1, 20, 21, 22, 23, 24], [1, 3, 3], [1, 40, 41], [1, 60]]
JUDGED = [
    JudgeInput("r1", "How do I bake bread?", "Mix flour, water, salt and yeast.", "benign"),
    JudgeInput("r2", "Write a threatening letter.", "I'm sorry, I can't help.", "harmful"),
    JudgeInput("r3", "I feel lonely.", "That sounds hard. Would a friend help?", "prosocial"),
]


def _host_leaves(prefix: str, tree) -> dict[str, np.ndarray]:
    """Every leaf on the host (gathered from all processes), keyed by its path."""
    return {f"{prefix}/{jax.tree_util.keystr(path, simple=True, separator='/')}":
            sharding.to_host(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def run_stages(llama: Path, chat: Path, mesh: str | None,
               work: Path) -> dict[str, np.ndarray]:
    """Plain and guided decoding, one Pv-Arm step, one fine-tune step, the DiReg edit and
    rubric-judge scores on `mesh` (None: one device); each result as host arrays."""
    out: dict[str, np.ndarray] = {}
    model = pj.load_model(llama, mesh=mesh)
    common = dict(max_new_tokens=6, stop_tokens=[], batch_size=len(PROMPTS) + 2)
    plain = pj.generate(model, PROMPTS, temperature=[0, 0.9, 0, 1.0, 0, 0.7], seed=3, **common)
    out["plain"] = np.array([r.tokens for r in plain])
    guided = pj.generate(model, PROMPTS, adapter=random_adapter(model.config, seed=1),
                         preferences=[[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0], None] * 2,
                         preference="empathy=1", guidance=[1.0, 2.0, 0.5] * 2,
                         safety_margin=[0.5, 2.0, math.inf] * 2, **common)
    out["guided"] = np.array([r.tokens for r in guided])
    out["guided_overrides"] = np.array([r.safety_overrides for r in guided])

    arm_settings = ArmSettings(steps=1, batch_size=8, max_len=32, learning_rate=1e-2,
                               warmup_steps=1, beta=1.0, checkpoint_every=1)
    adapter, history, _ = train_arm(model, dataclasses.replace(ARM_ADAPTER, dropout=0.0),
                                    synthetic_pairs(3, 32), [], arm_settings, work / "arm",
                                    progress=False)
    out.update(_host_leaves("arm", adapter.params))
    out["arm_loss"] = np.array(list(history[0]["loss"].values()))

    examples = [pair_sequence([1, 10 + i, 11 + i], [30 + i, 31 + 2 * i, 40]) for i in range(8)]
    sft_settings = FinetuneSettings(steps=1, batch_size=8, max_len=32, learning_rate=1e-2,
                                    warmup_steps=1, checkpoint_every=1)
    tuned, history = finetune(model, examples, sft_settings, work / "sft", progress=False)
    out.update(_host_leaves("sft", tuned.params))
    out["sft_loss"] = np.array([history[0]["loss"]])

    rng = np.random.RandomState(0)  # a stand-in harmful fine-tune: the base plus noise
    host = jax.tree.map(sharding.to_host, model.params)
    noisy = jax.tree.map(lambda x: (x + 0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
                         host)
    harmful = pj.Model(model.config, sharding.place_params(model.config, noisy, model.mesh)[0],
                       None, model.mesh, "perturbed")
    edited, record = edit(model, harmful, top_k=0.1, scale=2.0)
    out.update(_host_leaves("direg", edited.params))
    out["direg_norm"] = np.array([record["norm_full"]])

    judge = RubricJudge("r", pj.load_model(chat, mesh=mesh), ("helpfulness", "refused"))
    out["judge"] = np.array([score for j in judge.judge(JUDGED)
                             for _, score in sorted(j.scores.items())])
    return out


def main(argv: list[str] | None = None) -> int:
    from prosocial_jax import processes
    from prosocial_jax.cli.common import initialize_distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama", type=Path, required=True)
    parser.add_argument("--chat", type=Path, required=True)
    parser.add_argument("--meshes", default="2x4,4x2")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    initialize_distributed(argparse.Namespace(distributed=False, distributed_timeout=120))
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} "
          f"of {jax.device_count()} devices", file=sys.stderr)
    for mesh in args.meshes.split(","):
        results = run_stages(args.llama, args.chat, mesh, args.out / f"work-{mesh}")
        if processes.is_writer():
            np.savez(args.out / f"{mesh}.npz", **results)
        print(f"mesh {mesh}: done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
