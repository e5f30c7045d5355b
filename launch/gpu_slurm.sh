#!/usr/bin/env bash
# Runs a prosocial-jax command on a Slurm GPU cluster: one process per node, each driving all of
# its node's GPUs, together one global mesh.
#
#   NODES=2 GPUS_PER_NODE=8 launch/gpu_slurm.sh generate --config configs/llama3_8b.py \
#       --mesh 4x4 --prompts p.jsonl --out o.jsonl
#
# Outside an allocation the script submits itself with sbatch (--nodes, --gpus-per-node,
# --ntasks-per-node=1, --exclusive). Inside it (sbatch runs it on the first node), srun starts
# one process per node with PROSOCIAL_JAX_COORDINATOR_ADDRESS=<first node>:<port>,
# PROSOCIAL_JAX_NUM_PROCESSES=<nodes> and PROSOCIAL_JAX_PROCESS_ID=$SLURM_PROCID, so the
# processes hold their roll call before JAX starts (a missing or misnumbered process is named).
# The mesh must cover every GPU (DATAxMODEL = NODES x GPUS_PER_NODE). Only process 0 writes.
# Expects `pip install 'jax[cuda12]' -e .` in $VENV on a filesystem every node sees.
#
# Settings from the environment: NODES (2), GPUS_PER_NODE (8), VENV (.venv), PORT (default:
# derived from the job id, in 61440..65535), SBATCH_ARGS (more sbatch options, e.g.
# "--partition=gpu --time=4:00:00"), DRY_RUN=1 (print the commands instead of running them; in
# an allocation, also each process's environment).
#SBATCH --job-name=prosocial-jax
#SBATCH --output=prosocial-jax-%j.log
set -euo pipefail
NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
VENV=${VENV:-.venv}

# quote and run are tpu_pod.sh's too: this script stays self-contained because sbatch runs a
# copy of it from Slurm's spool folder, where no sibling file can be sourced.
quote() {  # one argument as the shell reads it back (single quotes where needed)
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

run() {  # runs (or with DRY_RUN=1, prints) one command
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    local first=1
    for arg in "$@"; do
      ((first)) || printf ' '
      quote "$arg"
      first=0
    done
    printf '\n'
  else
    "$@"
  fi
}

hostnames() {  # the allocation's node names, one per line (Slurm's own expansion)
  if command -v scontrol >/dev/null; then
    scontrol show hostnames "$1"
  else  # DRY_RUN away from a cluster: the common prefix[01-04,07] form
    python3 - "$1" <<'EOF'
import re, sys
for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", sys.argv[1]):
    m = re.fullmatch(r"(.*)\[(.*)\]", part)
    if not m:
        print(part); continue
    for item in m.group(2).split(","):
        lo, _, hi = item.partition("-")
        for n in range(int(lo), int(hi or lo) + 1):
            print(f"{m.group(1)}{n:0{len(lo)}d}")
EOF
  fi
}

if [[ $# -eq 0 ]]; then sed -n '2,20p' "$0" >&2; exit 2; fi

if [[ -z ${SLURM_JOB_ID:-} ]]; then  # submit this script as a batch job
  read -r -a extra <<<"${SBATCH_ARGS:-}"
  run sbatch --nodes="$NODES" --gpus-per-node="$GPUS_PER_NODE" --ntasks-per-node=1 \
    --exclusive "${extra[@]}" "$0" "$@"
  exit 0
fi

# In the allocation: one process per node.
mapfile -t nodes < <(hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}")
count=${#nodes[@]}
port=${PORT:-$((SLURM_JOB_ID % 4096 + 61440))}
coordinator="${nodes[0]}:$port"
if [[ ${DRY_RUN:-0} == 1 ]]; then
  for rank in "${!nodes[@]}"; do
    echo "# process $rank on ${nodes[$rank]}: PROSOCIAL_JAX_COORDINATOR_ADDRESS=$coordinator" \
      "PROSOCIAL_JAX_NUM_PROCESSES=$count PROSOCIAL_JAX_PROCESS_ID=$rank" \
      "($GPUS_PER_NODE GPUs)"
  done
fi
# shellcheck disable=SC2016  # $SLURM_PROCID is expanded by each task's shell, not this one
run srun --nodes="$count" --ntasks-per-node=1 --gpus-per-node="$GPUS_PER_NODE" \
  --kill-on-bad-exit=1 \
  --export=ALL,PROSOCIAL_JAX_COORDINATOR_ADDRESS="$coordinator",PROSOCIAL_JAX_NUM_PROCESSES="$count" \
  bash -c 'PROSOCIAL_JAX_PROCESS_ID=$SLURM_PROCID exec "$@"' - "$VENV/bin/prosocial-jax" "$@"
