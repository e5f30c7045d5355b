"""Flags and config files from settings dataclasses: flag > config > default, locked configs."""

import argparse
import dataclasses

import pytest

from prosocial_jax import settings
from prosocial_jax.cli import options


@dataclasses.dataclass(frozen=True)
class Toy:
    steps: int = 10
    rate: float = 0.5
    names: tuple[str, ...] = ("a", "b")
    weights: tuple[float, ...] = (1.0,)
    pairs: tuple[str, ...] = dataclasses.field(default=("x=1,y=2",),
                                               metadata={"separator": ";"})
    flag: bool = True
    label: str | None = None

    def __post_init__(self):
        settings.coerce(self, "toy settings")


@dataclasses.dataclass(frozen=True)
class Inputs:
    model: str | None = None

    def __post_init__(self):
        settings.coerce(self, "inputs")


TOY = options.Command(lambda args: 0, (options.Section("inputs", Inputs),
                                       options.Section("toy", Toy, key="toy")),
                      config_example="toy.steps=3")
PLAIN = options.Command(lambda args: 0, (options.Section("toy", Toy, key="toy"),))


def _parser():
    parser = argparse.ArgumentParser(prog="t")
    sub = parser.add_subparsers(dest="command", required=True)
    options.add_command(sub, "toy", TOY, help="", description="")
    options.add_command(sub, "plain", PLAIN, help="", description="")
    return parser


def _parse(*argv):
    return options.parse(_parser(), {"toy": TOY, "plain": PLAIN}, argv).settings


def _config(tmp_path, body: str):
    path = tmp_path / "config.py"
    path.write_text("import ml_collections\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict({body})\n")
    return str(path)


def test_defaults_come_from_the_dataclass():
    got = _parse("toy")
    assert got.toy == Toy() and got.inputs == Inputs()


def test_flag_beats_config_beats_default(tmp_path):
    config = _config(tmp_path, "{'model': 'm', 'toy': {'steps': 3, 'rate': 0.25, "
                               "'names': ['p', 'q', 'r']}}")
    got = _parse("toy", "--config", config, "--steps", "7", "--config.toy.rate=0.125")
    assert got.toy.steps == 7  # the flag
    assert got.toy.rate == 0.125  # the dotted override of the file
    assert got.toy.names == ("p", "q", "r")  # the file, a real list, stored as a tuple
    assert got.toy.weights == (1.0,) and got.toy.flag is True  # defaults
    assert got.inputs.model == "m"  # a top-level key


def test_list_flags_split_at_their_separator():
    got = _parse("toy", "--names", "u,v", "--weights", "0.5,2", "--pairs",
                 "empathy=0.5,helpfulness=0.5;truthfulness=1", "--flag", "false")
    assert got.toy.names == ("u", "v") and got.toy.weights == (0.5, 2.0)
    assert got.toy.pairs == ("empathy=0.5,helpfulness=0.5", "truthfulness=1")
    assert got.toy.flag is False


def test_unknown_config_keys_are_named(tmp_path):
    config = _config(tmp_path, "{'toy': {'stepz': 3}, 'modle': 'x'}")
    with pytest.raises(ValueError, match=r"config key\(s\) \['modle', 'toy.stepz'\] are not toy "
                                         r"settings"):
        _parse("toy", "--config", config)


def test_config_is_locked_and_typed(tmp_path):
    config = _config(tmp_path, "{'toy': {'steps': 3}}")
    with pytest.raises(SystemExit, match="rate"):  # not in the file: no new keys
        _parse("toy", "--config", config, "--config.toy.rate=0.1")
    with pytest.raises(SystemExit, match="steps"):
        _parse("toy", "--config", config, "--config.toy.steps=many")
    typed = _config(tmp_path, "{'toy': {'names': 'a,b'}}")  # a comma string is not a list
    with pytest.raises(ValueError, match="toy settings: names must be a list of strings, got "
                                         "'a,b'"):
        _parse("toy", "--config", typed)


def test_commands_without_config_refuse_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse("plain", "--config", _config(tmp_path, "{}"))
    assert "unrecognized arguments: --config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("plain", "--config.toy.steps=3")
    assert "plain takes no --config" in capsys.readouterr().err


def test_require_names_the_flag():
    with pytest.raises(ValueError, match="--model is required"):
        options.require(Inputs(), "model")
