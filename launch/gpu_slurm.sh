#!/usr/bin/env bash
# Runs a prosocial-jax command on a Slurm GPU cluster, one process per node (all its GPUs).
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/gpu_slurm.sh \
#       generate --config configs/llama3_8b.py --config.mesh=4x4 --prompts p.jsonl --out o.jsonl
#
# jax.distributed.initialize() reads the Slurm environment (--distributed); the mesh must cover
# every GPU of every node (DATAxMODEL = nodes x gpus-per-node in total). Only process 0 writes.
# Expects `pip install 'jax[cuda12]' -e .` in $VENV on a shared filesystem.
#SBATCH --job-name=prosocial-jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
VENV=${VENV:-.venv}
srun "$VENV/bin/prosocial-jax" "$@" --distributed
