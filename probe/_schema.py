"""Declared settings: one type-and-range description per key, checked the same way for CLI flags, Python calls
and study files (no heavy imports).

A :class:`Setting` says what a value must be (an integer, a number, true/false, a string, one of some choices,
or a list of those) and its range. :func:`check_setting` returns the value in its canonical form or raises one
:class:`probe.UsageError` line that names the key, what it must be, what it got and how to write it.

Lists: where a list is expected, a single value is accepted as a one-element list (``seeds = 0`` means
``seeds = [0]``). That rule holds for every list-valued setting, on the command line, in Python and in study
files. Fixed-length lists (``crop_scale``) must have their length.

:func:`dataclass_settings` derives the settings of a configuration dataclass (e.g.
:class:`probe._finetune.FinetuneConfig`) from its type annotations plus the constraints in each field's
``metadata`` (made with :func:`constraint`), so the dataclass, its CLI flags and its study keys cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._errors import UsageError

#: The default of a setting that has none (distinct from None, which may be a real default).
MISSING = object()


@dataclass(frozen=True)
class Setting:
    """What one setting's value must be.

    Attributes
    ----------
    kind : {"int", "float", "bool", "str"}
        The type of the value (or of each element when ``many``). ``float`` accepts integers.
    many : bool
        A list of ``kind``; a single value is taken as a one-element list.
    length : int, optional
        Exact length of the list (``many`` only).
    optional : bool
        ``None`` is allowed (the Python default of an optional setting; a study file leaves the key out).
    lo, hi : float, optional
        Bounds; ``lo_open``/``hi_open`` make them strict.
    choices : tuple of str, optional
        Allowed values.
    nonempty : bool
        A list must have at least one element.
    also : tuple
        Other literal values accepted as they are (``"auto"`` for ``accum_steps``).
    default : any
        The default (shown in errors as an example).
    """

    kind: str
    many: bool = False
    length: int | None = None
    optional: bool = False
    lo: float | None = None
    lo_open: bool = False
    hi: float | None = None
    hi_open: bool = False
    choices: tuple | None = None
    nonempty: bool = False
    also: tuple = ()
    default: Any = MISSING

    def describe(self) -> str:
        """What a value must be, in words: ``a positive integer``, ``a list of numbers in (0, 1]``..."""
        one = self._describe_one()
        if self.also:
            one += " or " + " or ".join(repr(a) for a in self.also)
        if not self.many:
            return one
        inner = one
        for single, many in (("an integer", "integers"), ("a positive integer", "positive integers"),
                             ("a number", "numbers"), ("a positive number", "positive numbers"),
                             ("true or false", "true/false values"), ("a string", "strings")):
            if one.startswith(single):
                inner = many + one[len(single):]
        if self.length:
            return f"a list of {self.length} {inner}"
        return f"a {'non-empty ' if self.nonempty else ''}list of {inner}"

    def _describe_one(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return "a string"
        noun = "integer" if self.kind == "int" else "number"
        if self.lo == 0 and self.lo_open and self.hi is None:
            return f"a positive {noun}"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"a {noun} in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"a{'n' if noun == 'integer' else ''} {noun} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"a{'n' if noun == 'integer' else ''} {noun} {'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"a{'n' if noun == 'integer' else ''} {noun}"


#: Settings several entry points share.
SEED = Setting("int", lo=0)  # numpy's generators take no negative seeds
WORKERS = Setting("int", lo=0, optional=True)  # data-loading processes: None = the default choice, 0 = in-process


def constraint(**kwargs) -> dict:
    """Field metadata for :func:`dataclasses.field`: the range and choices of a dataclass setting."""
    return {"setting": kwargs}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_setting(value: Any, setting: Setting, name: str, *, example: str | None = None) -> Any:
    """Return ``value`` in canonical form (int, float, bool, str, or a list of those; a tuple for fixed lengths)
    or raise a UsageError: ``{name} must be {what}; got {value}{hint}``.

    Parameters
    ----------
    name : str
        How the user wrote the key (``--epochs``, ``[finetune] epochs in study.toml``).
    example : str, optional
        How to write a valid value (``epochs = 10``), appended as the fix.
    """
    if value is None and setting.optional:
        return None
    if isinstance(value, str) and value in setting.also:
        return value
    if not setting.many:
        return _check_one(value, setting, name, example, value)
    values = list(value) if isinstance(value, (list, tuple)) else [value]  # a scalar is a one-element list
    if setting.nonempty and not values:
        _fail(setting, name, value, example, "an empty list")
    if setting.length is not None and len(values) != setting.length:
        _fail(setting, name, value, example, f"{len(values)} values")
    out = [_check_one(v, setting, name, example, value) for v in values]
    return tuple(out) if setting.length is not None else out


def _check_one(v: Any, s: Setting, name: str, example: str | None, whole: Any) -> Any:
    if isinstance(v, str) and v in s.also:
        return v
    if s.kind == "bool":
        if not isinstance(v, bool) and type(v).__name__ != "bool_":
            hint = "a string: write true or false without quotes" if isinstance(v, str) else ""
            _fail(s, name, whole, example, hint)
        return bool(v)
    if s.kind == "str":
        if not isinstance(v, str):
            _fail(s, name, whole, example)
        if s.choices is not None and v not in s.choices:
            _fail(s, name, whole, example, _did_you_mean(v, s.choices))
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        _fail(s, name, whole, example, "a string: drop the quotes" if isinstance(v, str) else "")
    if s.kind == "int":
        if not isinstance(v, numbers.Integral):
            _fail(s, name, whole, example, "not a whole number")
        v = int(v)
    else:
        v = float(v)
        if not math.isfinite(v):
            _fail(s, name, whole, example)
    if s.lo is not None and (v < s.lo or (s.lo_open and v == s.lo)):
        _fail(s, name, whole, example)
    if s.hi is not None and (v > s.hi or (s.hi_open and v == s.hi)):
        _fail(s, name, whole, example)
    return v


def _did_you_mean(value: str, choices: Iterable) -> str:
    import difflib

    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _fail(s: Setting, name: str, value: Any, example: str | None, hint: str = "") -> None:
    got = f"{value!r}" + (f" ({hint})" if hint else "")
    fix = f"; e.g. {example}" if example else ""
    raise UsageError(f"{name} must be {s.describe()}; got {got}{fix}")


# ------------------------------------------------------------------------------------------------ dataclasses


def dataclass_settings(cls) -> dict[str, Setting]:
    """Field name -> :class:`Setting` of a configuration dataclass, from its annotations and field metadata."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind, many, length, optional = _kind_of(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else MISSING
        out[f.name] = Setting(kind=kind, many=many, length=length, optional=optional, default=default,
                              **f.metadata.get("setting", {}))
    return out


def _kind_of(tp) -> tuple[str, bool, int | None, bool]:
    optional = False
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        tp = rest[0]
        args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        inner = args[0] if args else str
        length = len(args) if origin is tuple and args and args[-1] is not Ellipsis else None
        return _scalar_kind(inner), True, length, optional
    return _scalar_kind(tp), False, None, optional


def _scalar_kind(tp) -> str:
    for kind, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if tp is t:
            return kind
    raise TypeError(f"no setting kind for {tp!r}")


def toml_value(value: Any) -> str:
    """``value`` as it is written in a TOML file (for examples in errors)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)
