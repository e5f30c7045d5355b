"""One path from settings dataclasses to flags and config files.

Every command declares its settings as frozen dataclasses (`Section`s). Those dataclasses are
the only source of defaults: each field becomes a flag (`--max-new-tokens`, `--adapter-r1`) and
a config key (`generate.max_new_tokens`, or top level for the command's inputs), and the value a
command runs with is, in order of precedence,

    the flag given on the command line  >  the --config file (with --config.a.b=v overrides)
    >  the dataclass default.

A setting that cannot take effect without another (the guidance settings of `generate`
without --adapter) names that other one: `Section.needs`, or a field's `metadata["needs"]`, as
"section.field". Given as a flag without it, it is an error naming the missing flag; set by a
config file (a template, whose guided part waits for its adapter), a warning.

Config files are `configs/*.py` modules with `get_config()` returning an
`ml_collections.ConfigDict`. They are loaded locked: an override of a key the file does not
define is an error, and so is a key the command does not know (a typo never passes silently).
Lists are real lists (`("q_proj", "v_proj")`), not comma strings; on the command line a list
flag takes comma-separated values (`--adapter-target-modules q_proj,v_proj`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Section:
    """One settings dataclass of a command."""

    name: str  # attribute of `args.settings` that receives the instance
    cls: type  # a dataclass; its defaults are the command's defaults
    key: str = ""  # config section ("" = the top level of the config file)
    prefix: str = ""  # flag prefix: "adapter-" gives --adapter-r1
    skip: tuple[str, ...] = ()  # fields the command fills in itself (no flag, no config key)
    title: str | None = None  # heading of the flags in --help
    # "section.field": the setting without which this section's settings do nothing (a field's
    # metadata["needs"] says the same for one field)
    needs: str | None = None

    def fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.cls) if f.name not in self.skip]

    def dest(self, field: dataclasses.Field) -> str:
        return f"{self.prefix.replace('-', '_')}{field.name}"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar_type(annotation: Any) -> Any:
    """The non-None member of `X | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag_type(annotation: Any, separator: str = ","):
    kind = _scalar_type(annotation)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]

        def parse_list(text: str) -> list:
            try:
                return [item(v.strip()) for v in text.split(separator) if v.strip()]
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected a {separator!r}-separated list of {item.__name__}, got "
                    f"{text!r}") from None

        return parse_list
    if kind is bool:
        return boolean
    if kind in (int, float, str, Path):
        return kind
    raise TypeError(f"no flag type for {annotation!r}")


def _shown(value: Any, separator: str = ",") -> str:
    if isinstance(value, tuple):
        return separator.join(map(str, value)) or "(empty)"
    return "none" if value is None else str(value)


def add_flags(parser: argparse.ArgumentParser, section: Section,
              help: dict[str, str] | None = None) -> None:
    """One flag per field of `section` (default None: "not given"; the help shows the real
    default). The description is `help[name]`, else the field's `metadata["help"]`. A list
    field splits its flag at commas, or at `metadata["separator"]` when its items contain
    commas; one whose metadata says `repeatable` takes one item per flag instead
    (`--include a --include b`)."""
    group = parser.add_argument_group(section.title) if section.title else parser
    hints = _hints(section.cls)
    for field in section.fields():
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())  # type: ignore[misc]
        text = (help or {}).get(field.name, field.metadata.get("help", ""))
        kind = _flag_type(hints[field.name], field.metadata.get("separator", ","))
        if field.metadata.get("repeatable"):  # --include a --include b: one item per flag
            item = typing.get_args(_scalar_type(hints[field.name]))[0]
            kind = {"type": item, "action": "append"}
        else:
            kind = {"type": kind}
        group.add_argument(flag_name(section, field), dest=section.dest(field), **kind,
                           help=f"{text}{' ' if text else ''}(default "
                           f"{_shown(default, field.metadata.get('separator', ','))})")


def add_config_flag(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help=f"settings from a config file (configs/*.py); dotted overrides such as "
        f"--config.{example} follow it. Flags given explicitly win over the file.")


def load_config(path: Path, overrides: Sequence[str]):
    """The locked ConfigDict of `path` with `--config.a.b=value` overrides applied. `path` may
    end in `:ARG`, passed to the file's `get_config(ARG)` (a platform, for the real-size
    configs)."""
    from absl import flags
    from ml_collections import config_flags

    file = str(path).split(":", 1)[0]
    if not Path(file).is_file():
        raise FileNotFoundError(f"--config {file}: no such file")
    argv = ["prosocial-jax", f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    try:
        values(argv)
        return values.config
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        message = str(err).strip("'").replace("\\n", " ").replace("\\'", "'")
        raise SystemExit(f"prosocial-jax: error: bad --config: {message}") from None


def check_config_keys(config, sections: Sequence[Section], command: str) -> None:
    """Every key of the config must be a setting of this command (or one of its sections)."""
    tree = config.to_dict()
    top = {f.name for s in sections if not s.key for f in s.fields()}
    keyed = {s.key: s for s in sections if s.key}
    unknown = [key for key in tree if key not in top and key not in keyed]
    for key, section in keyed.items():
        value = tree.get(key, {})
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a section of {command} settings, got "
                             f"{value!r}")
        known = {f.name for f in section.fields()}
        unknown += [f"{key}.{name}" for name in value if name not in known]
    if unknown:
        known = sorted(top) + [f"{k}.*" for k in sorted(keyed)]
        raise ValueError(f"config key(s) {unknown} are not {command} settings (known: "
                         f"{', '.join(known)})")


def resolve(args: argparse.Namespace, section: Section, config=None) -> Any:
    """The section's dataclass built from flag > config > default (see the module docstring).

    Values pass through the dataclass's own checks: a wrong type or a bad value is an error
    naming the field."""
    tree = config.to_dict() if config is not None else {}
    values = tree.get(section.key, {}) if section.key else tree
    kwargs = {}
    for field in section.fields():
        given = getattr(args, section.dest(field), None)
        if given is not None:
            kwargs[field.name] = given
        elif field.name in values and values[field.name] is not None:
            kwargs[field.name] = values[field.name]
    return section.cls(**kwargs)


def given_settings(args: argparse.Namespace, sections: Sequence[Section],
                   config=None) -> dict[str, str]:
    """{"section.field": how it was given} for every setting given explicitly: "--flag" on the
    command line, else "config key a.b" from the --config file (defaults are not listed)."""
    tree = config.to_dict() if config is not None else {}
    given = {}
    for section in sections:
        values = tree.get(section.key, {}) if section.key else tree
        for field in section.fields():
            if getattr(args, section.dest(field), None) is not None:
                given[f"{section.name}.{field.name}"] = flag_name(section, field)
            elif values.get(field.name) is not None:
                key = f"{section.key}.{field.name}" if section.key else field.name
                given[f"{section.name}.{field.name}"] = f"config key {key}"
    return given


def flag_name(section: Section, field: dataclasses.Field) -> str:
    return f"--{section.prefix}{field.name.replace('_', '-')}"


def report_ignored(how: str, without: str, command: str, fix: str) -> None:
    """A setting given that cannot take effect `without` something: an error for a flag ("--x"),
    a warning on stderr for a config key (a config file is a template)."""
    if how.startswith("--"):
        raise ValueError(f"{how} has no effect {without}: {command} would ignore it ({fix}, "
                         f"or leave {how} out)")
    print(f"warning: {how} has no effect {without}; ignored", file=sys.stderr)


def report_given(given: dict[str, str], settings: Sequence[str], without: str, command: str,
                 fix: str) -> None:
    """`report_ignored` for each of `settings` ("section.field", or "section." for all of a
    section's) that was given."""
    for name, how in given.items():
        if any(name == s or (s.endswith(".") and name.startswith(s)) for s in settings):
            report_ignored(how, without, command, fix)


def check_needs(settings: argparse.Namespace, sections: Sequence[Section],
                given: dict[str, str], command: str) -> None:
    """`report_ignored` for every setting given whose needed setting (`Section.needs` /
    metadata["needs"]) is unset."""
    by_name = {s.name: s for s in sections}
    for section in sections:
        for field in section.fields():
            needs = field.metadata.get("needs", section.needs)
            how = given.get(f"{section.name}.{field.name}")
            if needs is None or how is None:
                continue
            owner, name = needs.split(".")
            if getattr(getattr(settings, owner), name) is not None:
                continue
            needed = by_name[owner]
            missing = flag_name(needed, next(f for f in needed.fields() if f.name == name))
            report_ignored(how, f"without {missing}", command, f"give {missing}")


def require(settings: Any, *names: str) -> None:
    """Inputs a command cannot run without: named as the flag (or the config key) to give."""
    for name in names:
        if getattr(settings, name) is None:
            raise ValueError(f"--{name.replace('_', '-')} is required (or a --config that sets "
                             f"{name})")


def resolve_all(args: argparse.Namespace, sections: Sequence[Section], command: str,
                config=None) -> argparse.Namespace:
    """`args.settings.NAME` for every section, after checking the config's keys."""
    if config is not None:
        check_config_keys(config, sections, command)
    return argparse.Namespace(**{s.name: resolve(args, s, config) for s in sections})


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its handler, its settings sections, and whether it reads --config."""

    run: Callable[[argparse.Namespace], int]
    sections: tuple[Section, ...] = ()
    config_example: str | None = None  # e.g. "generate.temperature=0.7"; None: no --config


def add_command(sub, name: str, command: Command, *, help: str, description: str,
                field_help: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The subparser of `command`: --config (when it reads one), then one flag per setting."""
    parser = sub.add_parser(name, help=help, description=description)
    if command.config_example is not None:
        add_config_flag(parser, command.config_example)
    for section in command.sections:
        add_flags(parser, section, field_help)
    parser.set_defaults(command=name)
    return parser


def parse(parser: argparse.ArgumentParser, commands: dict[str, Command],
          argv: Sequence[str]) -> argparse.Namespace:
    """Flags, then the config file and its dotted overrides, resolved into `args.settings`."""
    args, extra = parser.parse_known_args(list(argv))
    command = commands[args.command]
    overrides = [a for a in extra if a.startswith("--config.")]
    if len(overrides) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in overrides)}")
    path = getattr(args, "config", None)
    if overrides and path is None:
        parser.error(f"{overrides[0]} needs --config FILE"
                     if command.config_example else
                     f"{args.command} takes no --config (its flags are its settings)")
    config = load_config(path, overrides) if path is not None else None
    args.settings = resolve_all(args, command.sections, args.command, config)
    args.given = given_settings(args, command.sections, config)
    check_needs(args.settings, command.sections, args.given, args.command)
    return args
