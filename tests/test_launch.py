"""The launch scripts: shellcheck-clean, and what their dry runs print is what each platform
prescribes (Cloud TPU's gcloud commands with --worker=all; Slurm's sbatch and srun with one
task per node and the coordinator JAX itself would derive). `launch/local.sh` really runs in
test_multiprocess.py."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
USER_ARGS = ["generate", "--config", "configs/llama3_8b.py", "--mesh", "2x4", "--prompts",
             "my prompts's file.jsonl", "--out", "out.jsonl"]


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "TPU_", "PROSOCIAL_JAX_"))}
    result = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True,
                            text=True, env={**clean, "DRY_RUN": "1", **env}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_scripts_are_shellcheck_clean():
    assert [s.name for s in SCRIPTS] == ["gpu_slurm.sh", "local.sh", "tpu_pod.sh"]
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    result = subprocess.run([shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("tpu_type, zone, version, workers, chips", [
    ("v4-16", "us-central2-b", "tpu-ubuntu2204-base", 2, 4),  # 8 chips, 4 per VM
    ("v5litepod-8", "us-west4-a", "v2-alpha-tpuv5-lite", 1, 8),  # one 8-chip VM
])
def test_tpu_pod_dry_run(tpu_type, zone, version, workers, chips):
    env = {"TPU_TYPE": tpu_type, "TPU_NAME": "pj"}
    [create] = _dry_run("tpu_pod.sh", "create", **env)
    assert shlex.split(create) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pj",
                                   f"--zone={zone}", f"--accelerator-type={tpu_type}",
                                   f"--version={version}"]
    described, ssh = _dry_run("tpu_pod.sh", "run", *USER_ARGS, **env)
    assert described.startswith(f"# {tpu_type}: {workers} worker(s) x {chips} chips")
    words = shlex.split(ssh)
    assert words[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pj", f"--zone={zone}",
                         "--worker=all", words[8]]
    assert words[8].startswith("--command=") and len(words) == 9
    remote = shlex.split(words[8].removeprefix("--command="))  # what each worker's shell runs
    assert remote == ["cd", "prosocial_jax", "&&", ".venv/bin/prosocial-jax", *USER_ARGS,
                      "--distributed"]
    [setup] = _dry_run("tpu_pod.sh", "setup", **env)
    assert "--worker=all" in shlex.split(setup) and "'jax[tpu]'" in setup
    [sync] = _dry_run("tpu_pod.sh", "sync", **env)
    assert shlex.split(sync)[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse",
                                     f"--zone={zone}"]


def test_unknown_tpu_type_is_refused():
    result = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "create"], text=True,
                            capture_output=True, env={**os.environ, "TPU_TYPE": "v9-3",
                                                      "DRY_RUN": "1"})
    assert result.returncode == 2 and "unknown TPU_TYPE v9-3" in result.stderr


def test_slurm_dry_run_submits_then_starts_one_process_per_node(monkeypatch):
    [submit] = _dry_run("gpu_slurm.sh", *USER_ARGS, NODES="2", GPUS_PER_NODE="8",
                        SBATCH_ARGS="--partition=gpu --time=2:00:00")
    assert shlex.split(submit) == ["sbatch", "--nodes=2", "--gpus-per-node=8",
                                   "--ntasks-per-node=1", "--exclusive", "--partition=gpu",
                                   "--time=2:00:00", str(LAUNCH / "gpu_slurm.sh"), *USER_ARGS]

    # Inside the allocation sbatch made: the coordinator is the one JAX's own Slurm
    # auto-detection would pick (first node, a port derived from the job id).
    job = {"SLURM_JOB_ID": "122880", "SLURM_JOB_NODELIST": "gpu-a[07-08]",
           "GPUS_PER_NODE": "8"}
    *processes, srun = _dry_run("gpu_slurm.sh", *USER_ARGS, **job)
    from jax._src.clusters.slurm_cluster import SlurmCluster

    for key, value in {**job, "SLURM_STEP_NODELIST": job["SLURM_JOB_NODELIST"]}.items():
        monkeypatch.setenv(key, value)
    coordinator = SlurmCluster.get_coordinator_address(None, None)
    assert coordinator == "gpu-a07:61440"  # 122880 = 30 x 4096
    assert processes == [
        f"# process {rank} on gpu-a0{7 + rank}: PROSOCIAL_JAX_COORDINATOR_ADDRESS={coordinator} "
        f"PROSOCIAL_JAX_NUM_PROCESSES=2 PROSOCIAL_JAX_PROCESS_ID={rank} (8 GPUs)"
        for rank in range(2)]
    words = shlex.split(srun)
    assert words[:6] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                         "--kill-on-bad-exit=1", "--export=ALL,PROSOCIAL_JAX_COORDINATOR_ADDRESS="
                         f"{coordinator},PROSOCIAL_JAX_NUM_PROCESSES=2"]
    assert words[6:] == ["bash", "-c", 'PROSOCIAL_JAX_PROCESS_ID=$SLURM_PROCID exec "$@"', "-",
                         ".venv/bin/prosocial-jax", *USER_ARGS]


def test_local_dry_run_numbers_the_processes():
    lines = _dry_run("local.sh", "3", "prosocial-jax", "generate", "--prompt", "hi there",
                     PORT="4567", DEVICES_PER_PROCESS="2", XLA_FLAGS="")
    assert [shlex.split(line) for line in lines] == [
        ["env", "PROSOCIAL_JAX_COORDINATOR_ADDRESS=127.0.0.1:4567",
         "PROSOCIAL_JAX_NUM_PROCESSES=3", f"PROSOCIAL_JAX_PROCESS_ID={rank}",
         "XLA_FLAGS=--xla_force_host_platform_device_count=2", "prosocial-jax", "generate",
         "--prompt", "hi there"] for rank in range(3)]
