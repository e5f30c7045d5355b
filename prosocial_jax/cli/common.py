"""Helpers shared by the command modules: model flags, config files, settings dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CONFIG_HELP = ("Settings may also come from a config file: --config configs/NAME.py, with dotted "
               "overrides such as --config.generate.temperature=0.7. Flags given explicitly win.")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model",
                        help="HF safetensors folder, .gguf file, hf://owner/name[@revision] "
                        "(the only form that reaches a hub), or bundled:smollm2")
    parser.add_argument("--dtype", default=None,
                        help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    parser.add_argument("--mesh", default=None,
                        help="device mesh DATAxMODEL, e.g. 2x4 (default: one device)")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host pods)")


def dataclass_flags(parser, cls, prefix: str = "", skip=()) -> None:
    """One --flag per field of a settings dataclass (tuples as comma lists)."""
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default
        is_list = isinstance(default, tuple)
        kind = str if is_list else type(default)
        if kind is bool:
            kind = boolean
        parser.add_argument(f"--{prefix}{field.name.replace('_', '-')}", type=kind,
                            help=f"default {','.join(map(str, default)) if is_list else default}")


def boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def apply_config(args, config, section: str, defaults: dict,
                  top_level: Sequence[str] = ("model", "dtype", "mesh")) -> None:
    """Fills every setting not given on the command line from the config, then the defaults.

    A config file may hold sections for several commands; only this command's section is
    checked for unknown keys.
    """
    config = config.to_dict() if config is not None else {}
    settings = config.get(section, {})
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"config key(s) {[f'{section}.{k}' for k in unknown]} are not "
                         f"{section} settings (known: {', '.join(sorted(defaults))})")
    for key in top_level:
        if getattr(args, key, None) is None:
            setattr(args, key, config.get(key))
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, settings.get(key, default))


def require(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            raise ValueError(f"--{name.replace('_', '-')} is required (or a --config that sets "
                             "it)")


def floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name}: expected numbers separated by commas, got {text!r}") \
            from None


def add_overwrite_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace --out if it holds a previous {what} written by this "
                        "command (a folder of other files is never replaced)")


def check_out_and_checkpoints(out: Path, checkpoint_dir: Path) -> None:
    """--out is replaced as a whole when written: it must not hold the checkpoint folder."""
    from prosocial_jax.training.checkpoints import check_checkpoint_folder

    check_checkpoint_folder(checkpoint_dir)
    out, checkpoints = out.resolve(), checkpoint_dir.resolve()
    if out == checkpoints or out in checkpoints.parents:
        raise ValueError(f"--out {out} would contain the checkpoint folder {checkpoints}; "
                         "choose separate folders")


def write_report(folder: Path, name: str, record: dict[str, Any], plot: Callable,
                 table: str, overwrite: bool = False) -> str:
    """`folder/NAME.json` and `folder/NAME.png` (`plot(record["rows"], path)`), written as one
    output folder (see `files.write_output_folder`); prints the table; returns "wrote ..." for
    the command's closing line."""
    from prosocial_jax.files import write_output_folder

    def write(tmp: Path) -> None:
        (tmp / f"{name}.json").write_text(json.dumps(record, indent=2))
        plot(record["rows"], tmp / f"{name}.png")

    write_output_folder(folder, f"{name} report", write, overwrite)
    print(table)
    return f"wrote {folder / f'{name}.json'}, {folder / f'{name}.png'}"
