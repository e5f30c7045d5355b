#!/usr/bin/env bash
# Runs N cooperating processes of one command on this machine: one multi-process JAX run whose
# global mesh spans every process's devices, coordinated over 127.0.0.1.
#
#   launch/local.sh 2 .venv/bin/prosocial-jax generate --model bundled:smollm2 \
#       --mesh 2x1 --prompts prompts.jsonl --out out.jsonl
#   DEVICES_PER_PROCESS=4 launch/local.sh 2 .venv/bin/prosocial-jax generate ... --mesh 2x4
#
# Process I gets PROSOCIAL_JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, PROSOCIAL_JAX_NUM_PROCESSES=N
# and PROSOCIAL_JAX_PROCESS_ID=I, which every prosocial-jax command that runs on a mesh reads.
# Process 0's output streams here; every process's output also goes to LOG_DIR/process-I.log.
# When a process fails, the others are stopped, its log's tail is printed and the script exits
# with its status; Ctrl-C or a kill of this script stops all of them.
#
# Settings from the environment:
#   PORT                 coordinator port (default: a free one)
#   DEVICES_PER_PROCESS  simulated CPU devices per process (XLA_FLAGS), for CPU-only machines
#   LOG_DIR              where the logs go (default: a new temporary folder)
#   DRY_RUN=1            print each process's command line instead of running it
set -euo pipefail

usage() { sed -n '2,19p' "$0" >&2; exit 2; }
[[ $# -ge 2 && $1 =~ ^[1-9][0-9]*$ ]] || usage
count=$1
shift

port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
xla_flags=${XLA_FLAGS:-}
if [[ -n ${DEVICES_PER_PROCESS:-} ]]; then
  xla_flags="$xla_flags --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi

process_env() {  # the environment of process $1
  printf '%s\n' "PROSOCIAL_JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" \
    "PROSOCIAL_JAX_NUM_PROCESSES=$count" "PROSOCIAL_JAX_PROCESS_ID=$1"
  if [[ -n $xla_flags ]]; then printf '%s\n' "XLA_FLAGS=${xla_flags# }"; fi
}

if [[ ${DRY_RUN:-0} == 1 ]]; then
  for ((i = 0; i < count; i++)); do
    mapfile -t variables < <(process_env "$i")
    printf '%q ' env "${variables[@]}" "$@"
    printf '\n'
  done
  exit 0
fi

log_dir=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/prosocial-jax-local.XXXXXX")}
mkdir -p "$log_dir"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "local.sh: $count processes, coordinator 127.0.0.1:$port, logs in $log_dir" >&2
for ((i = 0; i < count; i++)); do
  mapfile -t variables < <(process_env "$i")
  log="$log_dir/process-$i.log"
  if ((i == 0)); then
    env "${variables[@]}" "$@" > >(tee "$log") 2>&1 &
  else
    env "${variables[@]}" "$@" >"$log" 2>&1 &
  fi
  pids+=("$!")
done

declare -A rank_of
for i in "${!pids[@]}"; do rank_of[${pids[$i]}]=$i; done
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  status=0
  wait -n -p finished "${running[@]}" || status=$?
  if ((status != 0)); then
    rank=${rank_of[$finished]}
    echo "local.sh: process $rank exited with status $status; stopping the others." \
      "The end of $log_dir/process-$rank.log:" >&2
    tail -n 40 "$log_dir/process-$rank.log" >&2
    exit "$status"
  fi
  still=()
  for pid in "${running[@]}"; do [[ $pid == "$finished" ]] || still+=("$pid"); done
  running=("${still[@]}")
done
pids=()
echo "local.sh: all $count processes finished" >&2
