"""Typed settings: every field of a settings dataclass holds the type it declares.

Settings come from flags, config files and JSON (adapter configs, run records), where a value
of the wrong type would otherwise surface later as a TypeError deep inside training. `coerce`
checks each field against its annotation once, at construction, converting only where nothing
can be lost (an int for a float, a list for a tuple), and names the field and value otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, expected: Any) -> Any:
    """`value` as `expected`, or raises TypeError."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _convert(value, option)
            except TypeError:
                continue
        raise TypeError
    if expected is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise TypeError
        item = args[0]
        return tuple(_convert(v, item) for v in value)
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if expected is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if expected is str:
        if isinstance(value, str):
            return value
        raise TypeError
    return value  # other annotations are not checked here


def _describe(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return "a list of " + {str: "strings", int: "integers", float: "numbers"}.get(
            args[0], str(args[0]))
    if expected is type(None):
        return "null"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(expected, str(expected))


def coerce(settings: Any, where: str, error: type[Exception] = ValueError) -> None:
    """Checks (and losslessly converts) every field of a frozen settings dataclass in place.

    Raises `error` naming `where`, the field and the value. Floats must be finite (or
    not NaN, for a field whose metadata says `allow_infinity`).
    """
    hints = _hints(type(settings))
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        expected = hints[field.name]
        try:
            converted = _convert(value, expected)
        except TypeError:
            raise error(f"{where}: {field.name} must be {_describe(expected)}, got "
                        f"{value!r}") from None
        numbers = converted if isinstance(converted, tuple) else (converted,)
        # A field may declare infinity meaningful (a safety margin of inf turns a stage off);
        # NaN never is.
        allowed = math.isnan if field.metadata.get("allow_infinity") else (
            lambda v: not math.isfinite(v))
        if any(isinstance(v, float) and allowed(v) for v in numbers):
            raise error(f"{where}: {field.name} must be "
                        f"{'a number' if field.metadata.get('allow_infinity') else 'finite'}, "
                        f"got {value!r}")
        object.__setattr__(settings, field.name, converted)


def positive(settings: Any, where: str, *names: str, error: type[Exception] = ValueError,
             allow_zero: bool = False) -> None:
    """Raises `error` naming the first field (or tuple entry) that is not > 0 (>= 0)."""
    for name in names:
        value = getattr(settings, name)
        for v in value if isinstance(value, tuple) else (value,):
            if v < 0 or (v == 0 and not allow_zero):
                bound = ">= 0" if allow_zero else "> 0"
                raise error(f"{where}: {name} must be {bound}, got {value!r}")
