"""Starting a multi-process run: flags and environment, checked before JAX starts; a
coordinator nobody answers at is a clear error within the timeout, never a hang."""

import argparse
import socket
import subprocess
import sys
import time

import pytest

from prosocial_jax import cli
from prosocial_jax.cli.common import add_distributed_flag, distributed_settings


def _args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_distributed_flag(parser)
    return parser.parse_args(list(flags))


def test_one_process_unless_asked():
    assert distributed_settings(_args(), {}) is None
    # --distributed alone: JAX auto-detects the cluster (TPU pods, Slurm).
    assert distributed_settings(_args("--distributed"), {}) == {"initialization_timeout": 300}


def test_flags_environment_and_their_precedence():
    flags = ("--coordinator-address", "10.0.0.1:1234", "--num-processes", "4",
             "--process-id", "3", "--distributed-timeout", "30")
    assert distributed_settings(_args(*flags), {}) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
        "initialization_timeout": 30}
    environ = {"PROSOCIAL_JAX_COORDINATOR_ADDRESS": "host-0:8476",
               "PROSOCIAL_JAX_NUM_PROCESSES": "2", "PROSOCIAL_JAX_PROCESS_ID": "1"}
    assert distributed_settings(_args(), environ) == {
        "coordinator_address": "host-0:8476", "num_processes": 2, "process_id": 1,
        "initialization_timeout": 300}
    # A flag wins over its environment variable.
    assert distributed_settings(_args("--process-id", "0"), environ)["process_id"] == 0


@pytest.mark.parametrize("flags, environ, message", [
    (("--num-processes", "2"), {},
     "needs all of --coordinator-address, --num-processes and --process-id; got "
     "--num-processes, missing --coordinator-address (or $PROSOCIAL_JAX_COORDINATOR_ADDRESS), "
     "--process-id (or $PROSOCIAL_JAX_PROCESS_ID)"),
    (("--coordinator-address", "h:1", "--num-processes", "2", "--process-id", "2"), {},
     "--process-id 2 is out of range for --num-processes 2 (ids are 0..1)"),
    (("--coordinator-address", "h:1", "--num-processes", "0", "--process-id", "0"), {},
     "--num-processes must be at least 1, got 0"),
    (("--coordinator-address", "h", "--num-processes", "2", "--process-id", "0"), {},
     "--coordinator-address must be HOST:PORT with a port in 1..65535, got 'h'"),
    (("--coordinator-address", "h:70000", "--num-processes", "2", "--process-id", "0"), {},
     "got 'h:70000'"),
    (("--coordinator-address", "h:1", "--process-id", "0"),
     {"PROSOCIAL_JAX_NUM_PROCESSES": "two"},
     "$PROSOCIAL_JAX_NUM_PROCESSES must be a whole number, got 'two'"),
    (("--coordinator-address", "h:1", "--num-processes", "2", "--process-id", "0",
      "--distributed-timeout", "0"), {}, "--distributed-timeout must be at least 1 second"),
])
def test_inconsistent_settings_are_named(flags, environ, message):
    with pytest.raises(ValueError) as err:
        distributed_settings(_args(*flags), environ)
    assert message in str(err.value)


def test_the_command_line_refuses_them_before_any_work(capsys, tmp_path):
    code = cli.main(["generate", "--model", "bundled:smollm2", "--prompt", "hi",
                     "--num-processes", "2", "--process-id", "5",
                     "--coordinator-address", "127.0.0.1:1", "--out",
                     str(tmp_path / "o.jsonl")])
    assert code == 2
    assert "--process-id 5 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_coordinator_is_a_clear_error_within_the_timeout(tiny_chat, tmp_path):
    # Process 1 of 2, and nobody at process 0's address: it must give up after its timeout
    # with a message, not wait forever (the test's own bound is the backstop). JAX alone ends
    # the process from C++ with a stack trace after its timeout.
    command = [sys.executable, "-m", "prosocial_jax.cli", "generate", "--model",
               str(tiny_chat.path), "--prompt", "hi", "--out", str(tmp_path / "o.jsonl"),
               "--coordinator-address", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
               "--process-id", "1", "--distributed-timeout", "5"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"no answer after 120 s (asked for a 5 s timeout): {err.stderr}")
    assert done.returncode != 0, done.stderr
    assert time.monotonic() - started < 120
    assert "no coordinator answers at 127.0.0.1:" in done.stderr, done.stderr[-2000:]
    assert "after 5 s" in done.stderr and "start process 0 first" in done.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_process_0_names_a_port_already_taken(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["generate", "--model", "bundled:smollm2", "--prompt", "hi",
                         "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                         "--process-id", "0", "--out", str(tmp_path / "o.jsonl")])
    assert code == 2
    assert f"process 0 cannot serve the coordinator on port {port}" in capsys.readouterr().err
