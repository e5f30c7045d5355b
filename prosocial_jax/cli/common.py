"""Inputs and checks shared by the command modules."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from prosocial_jax import settings
from prosocial_jax.cli.options import Section


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


def add_distributed_flag(parser: argparse.ArgumentParser) -> None:
    """Only commands that run on a multi-process mesh offer this (generate, finetune,
    train-arm)."""
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host pods)")


def initialize_distributed(args: argparse.Namespace) -> None:
    if args.distributed:
        import jax

        jax.distributed.initialize()


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
