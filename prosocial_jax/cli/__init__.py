"""`prosocial-jax` command line. Every command has --help.

Commands live in modules by stage: `decoding` (generate, plain or guided; prompts; memory),
`direg` (harmful-data, finetune, harm-vector), `pvarm` (preference-set, train-arm),
`pipeline` (compare: every stage side by side; guidance-sweep), `evaluation` (evaluate:
judges, metrics and report; metrics: from score rows), `ablations` (ablate-*: the questions
the paper leaves open). Each command's settings are
dataclasses of the stage it runs; `options` turns them into flags and config keys (see its
docstring for the precedence of flags, config files and defaults). Every command runs with JAX's
persistent compilation cache on (`compilation_cache`), so a repeated run skips compilation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prosocial_jax.cli import (
    ablations,
    compilation_cache,
    decoding,
    direg,
    evaluation,
    options,
    pipeline,
    pvarm,
)

COMMAND_MODULES = (direg, pvarm, decoding, evaluation, pipeline, ablations)  # pipeline order

PIPELINE = """the pipeline in commands (each has --help; `make demo` runs them all on SmolLM2):
  1. DiReg:    harmful-data -> finetune -> harm-vector   (the base minus its harm direction)
  2. Pv-Arm:   preference-set (or your own pairs) -> train-arm   (the reward adapter)
  3. decode:   generate --model EDITED --adapter ADAPTER --preference empathy=1
  4. judge:    evaluate --generations FILE   (or compare: every stage side by side)
  5. explore:  sweep (a preference grid), guidance-sweep (w, tau), ablate-* (open questions)
"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, options.Command]]:
    """The parser and {command name: Command}."""
    parser = argparse.ArgumentParser(
        prog="prosocial-jax",
        description="ProSocialAlign in JAX: safe first, prosocial second, at inference time.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=PIPELINE)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, options.Command] = {}
    for module in COMMAND_MODULES:
        commands.update(module.register(sub))
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    try:
        args = options.parse(parser, commands, list(sys.argv[1:] if argv is None else argv))
        cache = compilation_cache.enable()  # before anything compiles
        code = commands[args.command].run(args)
        if cache.hits or cache.writes:
            print(cache.summary(), file=sys.stderr)
        return code
    except (OSError, ValueError) as err:
        # Every input problem (files, configs, data rows, settings, checkpoints, adapters,
        # non-finite numbers) is raised as one of these with a message naming it: one line,
        # no traceback. Anything else is a bug and keeps its traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
