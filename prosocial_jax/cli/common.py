"""Inputs and checks shared by the command modules."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from pathlib import Path

from prosocial_jax import settings
from prosocial_jax.cli import rendezvous
from prosocial_jax.cli.options import Section, report_ignored


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """The model a command loads (top level of a config file)."""

    model: str | None = dataclasses.field(default=None, metadata=_help(
        "HF safetensors folder, .gguf file, hf://owner/name[@revision] (the only form that "
        "reaches a hub), or bundled:smollm2"))
    dtype: str | None = dataclasses.field(default=None, metadata=_help(
        "float32 | bfloat16 | float16 (none: the checkpoint's)"))
    mesh: str | None = dataclasses.field(default=None, metadata=_help(
        "device mesh DATAxMODEL, e.g. 2x4 (none: one device)"))

    def __post_init__(self):
        settings.coerce(self, "model inputs")


MODEL = Section("inputs", ModelInputs, title="model")


# Where a process of a multi-process run finds the others, when no cluster tells JAX (TPU pods
# and Slurm do): flags, or these environment variables (a flag wins).
DISTRIBUTED_ENV = {"coordinator_address": "PROSOCIAL_JAX_COORDINATOR_ADDRESS",
                   "num_processes": "PROSOCIAL_JAX_NUM_PROCESSES",
                   "process_id": "PROSOCIAL_JAX_PROCESS_ID"}


def add_distributed_flag(parser: argparse.ArgumentParser) -> None:
    """Only commands that run on a multi-process mesh offer these (generate, finetune,
    train-arm)."""
    group = parser.add_argument_group(
        "multi-process runs", "one global mesh over every process's devices; only process 0 "
        "writes outputs")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run: jax.distributed.initialize(), which "
                       "finds the others itself on TPU pods and Slurm")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="process 0's address and a free port, where the others connect "
                       f"(or ${DISTRIBUTED_ENV['coordinator_address']}); with the two below, "
                       "implies --distributed")
    group.add_argument("--num-processes", metavar="N",
                       help=f"processes in the run (or ${DISTRIBUTED_ENV['num_processes']})")
    group.add_argument("--process-id", metavar="I",
                       help=f"this process, 0..N-1 (or ${DISTRIBUTED_ENV['process_id']})")
    group.add_argument("--distributed-timeout", metavar="SECONDS", type=int, default=300,
                       help="how long to wait for every process to join (default 300)")


def _whole_number(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def distributed_settings(args: argparse.Namespace,
                         environ: dict[str, str]) -> dict[str, object] | None:
    """The keyword arguments of `jax.distributed.initialize` the flags and environment ask for,
    or None for a single-process run; a partial or inconsistent set is a ValueError naming it."""
    flags = {"coordinator_address": "--coordinator-address", "num_processes": "--num-processes",
             "process_id": "--process-id"}
    given, source = {}, {}
    for key, flag in flags.items():
        value = getattr(args, key, None)
        if value is None and environ.get(DISTRIBUTED_ENV[key]):
            value, source[key] = environ[DISTRIBUTED_ENV[key]], f"${DISTRIBUTED_ENV[key]}"
        if value is not None:
            given[key] = value
            source.setdefault(key, flag)
    if not given:
        return ({"initialization_timeout": args.distributed_timeout}
                if getattr(args, "distributed", False) else None)
    missing = [f"{flags[k]} (or ${DISTRIBUTED_ENV[k]})" for k in flags if k not in given]
    if missing:
        raise ValueError(f"a multi-process run without cluster auto-detection needs all of "
                         f"--coordinator-address, --num-processes and --process-id; got "
                         f"{', '.join(source[k] for k in given)}, missing {', '.join(missing)}")
    address = str(given["coordinator_address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{source['coordinator_address']} must be HOST:PORT with a port in "
                         f"1..65535, got {address!r}")
    count = _whole_number(str(given["num_processes"]), source["num_processes"])
    rank = _whole_number(str(given["process_id"]), source["process_id"])
    if count < 1:
        raise ValueError(f"{source['num_processes']} must be at least 1, got {count}")
    if not 0 <= rank < count:
        raise ValueError(f"{source['process_id']} {rank} is out of range for "
                         f"{source['num_processes']} {count} (ids are 0..{count - 1})")
    if args.distributed_timeout < 1:
        raise ValueError(f"--distributed-timeout must be at least 1 second, got "
                         f"{args.distributed_timeout}")
    return {"coordinator_address": address, "num_processes": count, "process_id": rank,
            "initialization_timeout": args.distributed_timeout}


def initialize_distributed(args: argparse.Namespace) -> None:
    """Joins the multi-process run the flags / environment describe (nothing for one
    process). Call it before any JAX computation.

    With explicit settings, the processes first hold a roll call on the coordinator port
    (`rendezvous`), so a taken port, a missing process, a duplicate id or a different process
    count stops every process with a message that names it. A process that dies later makes
    JAX end the others with its own fatal message."""
    kwargs = distributed_settings(args, dict(os.environ))
    if kwargs is None:
        return
    import jax

    address = kwargs.get("coordinator_address")
    if address is not None:
        print(f"joining the multi-process run at {address} as process {kwargs['process_id']} "
              f"of {kwargs['num_processes']} (timeout {kwargs['initialization_timeout']} s)",
              file=sys.stderr)
        role = rendezvous.serve if kwargs["process_id"] == 0 else functools.partial(
            rendezvous.join, rank=kwargs["process_id"])
        left = role(address, count=kwargs["num_processes"],
                    timeout=kwargs["initialization_timeout"])
        kwargs["initialization_timeout"] = max(int(left), 1)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as err:  # jaxlib's errors are not one type; the message is what helps
        where = (f"coordinator {address} as process {kwargs['process_id']} of "
                 f"{kwargs['num_processes']}" if address else "the cluster's auto-detected run")
        raise ValueError(f"could not join the multi-process run ({where}): {err}") from None


def add_overwrite_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace --out if it holds a previous {what} written by this "
                        "command (a folder of other files is never replaced)")


def add_restart_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restart-on-change", action="store_true",
                        help="if --checkpoint-dir holds a run with other settings or data, "
                        "discard it and start afresh (without it: refused; a run with the "
                        "same settings always resumes)")


def check_out_and_checkpoints(out: Path, checkpoint_dir: Path) -> None:
    """--out is replaced as a whole when written: it must not hold the checkpoint folder."""
    from prosocial_jax.training.checkpoints import check_checkpoint_folder

    check_checkpoint_folder(checkpoint_dir)
    out, checkpoints = out.resolve(), checkpoint_dir.resolve()
    if out == checkpoints or out in checkpoints.parents:
        raise ValueError(f"--out {out} would contain the checkpoint folder {checkpoints}; "
                         "choose separate folders")


def check_hf_split(args: argparse.Namespace, key: str, sources, command: str) -> None:
    """A data split names a split of an hf:// data set; with local files only it does nothing."""
    how = args.given.get(key)
    local = [str(s) for s in sources if s is not None]
    if how is not None and not any(s.startswith("hf://") for s in local):
        report_ignored(how, f"for local data ({', '.join(local)})", command,
                       "give an hf:// data set")
