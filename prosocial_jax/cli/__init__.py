"""`prosocial-jax` command line. Every command has --help.

Commands live in modules by stage: `decoding` (generate, plain or guided; prompts; memory),
`direg` (harmful-data, finetune, harm-vector), `pvarm` (preference-set, train-arm),
`pipeline` (compare: every stage side by side).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prosocial_jax.cli import decoding, direg, pipeline, pvarm

COMMAND_MODULES = (decoding, direg, pvarm, pipeline)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and {command: handler}."""
    parser = argparse.ArgumentParser(
        prog="prosocial-jax",
        description="ProSocialAlign in JAX: safe first, prosocial second, at inference time.")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {}
    for module in COMMAND_MODULES:
        handlers.update(module.register(sub))
    return parser, handlers


def _parse_config_flags(argv: list[str]):
    """Consumes --config FILE and --config.a.b=value (ml_collections) from argv."""
    from absl import flags
    from ml_collections import config_flags

    full_argv = ["prosocial-jax", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                    lock_config=False, sys_argv=full_argv)
    try:
        rest = values(full_argv, known_only=True)[1:]
        return values.config, rest
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        message = str(err).strip("'").replace("\\n", " ").replace("\\'", "'")
        raise SystemExit(f"prosocial-jax: error: bad --config: {message}") from None


def main(argv: Sequence[str] | None = None) -> int:
    config, rest = _parse_config_flags(list(sys.argv[1:] if argv is None else argv))
    parser, handlers = build_parser()
    args = parser.parse_args(rest)
    args.config = config
    try:
        return handlers[args.command](args)
    except (OSError, ValueError) as err:
        # Every input problem (files, configs, data rows, settings, checkpoints, adapters,
        # non-finite numbers) is raised as one of these with a message naming it: one line,
        # no traceback. Anything else is a bug and keeps its traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
