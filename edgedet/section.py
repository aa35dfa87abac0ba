"""Config sections as dataclasses, validated from YAML data on construction and on assignment.

A section is a ``@dataclass(init=False)`` subclass of :class:`Section`. Its field types say what a value may
be (``int``, ``float``, ``bool``, ``str``, ``Path``, ``Literal``, ``Optional``/``Union``, ``list``, ``tuple``,
``dict``, another section); ``Annotated[T, Range(...)]`` bounds a number and ``Annotated[T, Check(fn)]`` adds a
rule of one value; a section's ``_check`` method holds a rule across its keys. Every problem is collected with
its key path (unknown keys too), so one wrong file is described in one pass. Stdlib only: pydantic's import and
validators were most of the config's resident memory (README, performance).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Optional, TypeVar, Union

Loc = tuple[Union[str, int], ...]
S = TypeVar("S", bound="Section")


class Problem(NamedTuple):
    """One wrong value: where (the key path), what is expected, the value given, and its kind."""

    loc: Loc
    text: str  # "must be a valid integer", "unknown key", "is required", or a section's own rule
    value: Any
    kind: Literal["value", "unknown", "missing", "rule"]  # rule: a section's check across its keys


class Invalid(ValueError):
    """Validation failed; ``problems`` lists every wrong key, in the order of the fields."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        super().__init__(f"{dotted(first.loc)}: {first.text}" if first.loc else first.text)


def dotted(loc: Loc) -> str:
    """``("models", 0, "name")`` -> ``models[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number (``Annotated[int, Range(ge=1, le=65535)]``)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def violated(self, value: float) -> Optional[str]:
        if self.ge is not None and not value >= self.ge:
            return f"must be greater than or equal to {_number(self.ge)}"
        if self.gt is not None and not value > self.gt:
            return f"must be greater than {_number(self.gt)}"
        if self.le is not None and not value <= self.le:
            return f"must be less than or equal to {_number(self.le)}"
        if self.lt is not None and not value < self.lt:
            return f"must be less than {_number(self.lt)}"
        return None


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule of one value once its type is right: ``fn`` raises ValueError("must be ...") or returns the
    value to keep."""

    fn: Callable[[Any], Any]


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}
_FAIL = object()


def _name(tp: Any) -> str:
    """What a value of ``tp`` is, in the words of an error ("a valid integer")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _name(args[0])
    if origin is Literal:
        words = [repr(a) for a in args]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    if origin is Union:
        return " or ".join(_name(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        if origin is list:
            return "a valid list"
        return f"a list of {len(args)} {'numbers' if set(args) <= {int, float} else 'values'}"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, Section)):
        return "a section (a mapping of keys)"
    return {int: "a valid integer", float: "a valid number", bool: "a valid boolean", str: "a valid string",
            Path: "a file path (a string)"}.get(tp, f"a {getattr(tp, '__name__', tp)}")


def _scalar(tp: Any, value: Any) -> Any:
    """``value`` as ``tp`` (int, float, bool, str, Path), or _FAIL; numbers also from their text."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        return _FAIL
    if isinstance(value, bool):  # `port: true` is a mistake, not 1
        return _FAIL
    if tp in (int, float) and isinstance(value, str):
        try:
            return tp(value.strip())
        except ValueError:
            return _FAIL
    if tp is int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return int(value) if integral else _FAIL
    if tp is float:
        return float(value) if isinstance(value, (int, float)) else _FAIL
    if tp is str:
        return value if isinstance(value, str) else _FAIL
    if tp is Path:
        return value if isinstance(value, Path) else Path(value) if isinstance(value, str) else _FAIL
    return value if isinstance(value, tp) else _FAIL


def convert(tp: Any, value: Any, loc: Loc, problems: list[Problem]) -> Any:
    """``value`` as type ``tp``; on failure a Problem is added and _FAIL returned."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        raw = value  # errors show the value as written
        value = convert(args[0], value, loc, problems)
        for rule in args[1:] if value is not _FAIL else ():
            if isinstance(rule, Range) and value is not None:
                text = rule.violated(value)
                if text:
                    problems.append(Problem(loc, text, raw, "value"))
                    return _FAIL
            elif isinstance(rule, Check):
                try:
                    value = rule.fn(value)
                except ValueError as err:
                    # A rule over a mapping (thresholds) names the entries it refuses itself.
                    problems.append(Problem(loc, str(err), raw, "rule" if isinstance(raw, Mapping) else "value"))
                    return _FAIL
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        branches = [a for a in args if a is not type(None)]
        if len(branches) == 1:
            return convert(branches[0], value, loc, problems)
        for branch in branches:
            result = convert(branch, value, loc, [])
            if result is not _FAIL:
                return result
        problems.append(Problem(loc, f"must be {_name(tp)}", value, "value"))
        return _FAIL
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        problems.append(Problem(loc, f"must be {_name(tp)}", value, "value"))
        return _FAIL
    if origin is list or origin is tuple:
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            problems.append(Problem(loc, f"must be {_name(tp)}", value, "value"))
            return _FAIL
        kinds = args if origin is tuple else args * len(value)
        items = [convert(kind, item, (*loc, index), problems) for index, (kind, item) in
                 enumerate(zip(kinds, value))]
        return _FAIL if any(item is _FAIL for item in items) else origin(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(Problem(loc, f"must be {_name(tp)}", value, "value"))
            return _FAIL
        pairs = {convert(args[0], key, (*loc, str(key)), problems): convert(args[1], item, (*loc, str(key)),
                                                                              problems)
                 for key, item in value.items()}
        return _FAIL if _FAIL in pairs or _FAIL in pairs.values() else pairs
    if isinstance(tp, type) and issubclass(tp, Section):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            problems.append(Problem(loc, f"must be {_name(tp)}", value, "value"))
            return _FAIL
        return tp._build(value, loc, problems)
    result = _scalar(tp, value)
    if result is _FAIL:
        problems.append(Problem(loc, f"must be {_name(tp)}", value, "value"))
    return result


_HINTS: dict[type, dict[str, Any]] = {}


def field_types(cls: type[Section]) -> dict[str, Any]:
    """Each field's type, in field order (annotations evaluated once per class)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls, include_extras=True)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return _HINTS[cls]


def section_type(tp: Any) -> Optional[type[Section]]:
    """The section class a field holds (also inside Optional, Annotated or list), else None."""
    while typing.get_origin(tp) in (typing.Annotated, Union, list):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp if isinstance(tp, type) and issubclass(tp, Section) else None


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _FAIL


class Section:
    """Base of every config section: unknown keys are errors, and every value is checked, also when a field
    is assigned later (the section's rule across keys then runs again)."""

    _fields_set: set[str]

    def __init__(self, **values: Any) -> None:
        problems: list[Problem] = []
        built = type(self)._build(values, (), problems)
        if problems:
            raise Invalid(problems)
        object.__setattr__(self, "__dict__", built.__dict__)

    @classmethod
    def from_data(cls: type[S], data: Any) -> S:
        """A section from YAML data; Invalid lists every problem."""
        problems: list[Problem] = []
        built = convert(cls, data, (), problems)
        if problems:
            raise Invalid(problems)
        return typing.cast(S, built)

    @classmethod
    def _build(cls: type[S], data: Mapping[Any, Any], loc: Loc, problems: list[Problem]) -> S:
        before = len(problems)
        self = object.__new__(cls)
        types = field_types(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                value = convert(types[f.name], data[f.name], (*loc, f.name), problems)
            else:
                value = _default(f)
                if value is _FAIL:
                    problems.append(Problem((*loc, f.name), "is required", None, "missing"))
            object.__setattr__(self, f.name, value)
        problems.extend(_unknown_keys(data, types, loc))
        object.__setattr__(self, "_fields_set", set(data) & set(types))
        if len(problems) == before and (broken := self._broken_rule(loc, lambda: dict(data))) is not None:
            problems.append(broken)
        return self

    @classmethod
    def construct(cls: type[S], **values: Any) -> S:
        """A section from values already valid, unchecked (defaults for the fields not given)."""
        self = object.__new__(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, values[f.name] if f.name in values else _default(f))
        object.__setattr__(self, "_fields_set", set(values))
        return self

    def _check(self) -> None:
        """A rule across this section's keys: raise ValueError with the message (overridden where needed)."""

    def _broken_rule(self, loc: Loc, shown: Callable[[], Any]) -> Optional[Problem]:
        """:meth:`_check` as a problem at ``loc`` that shows what ``shown`` returns, called only then (None: the
        rule holds)."""
        try:
            self._check()
        except ValueError as err:
            return Problem(loc, str(err), shown(), "rule")
        return None

    def __setattr__(self, name: str, value: Any) -> None:
        types = field_types(type(self))
        if name not in types:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        problems: list[Problem] = []
        value = convert(types[name], value, (name,), problems)
        if problems:
            raise Invalid(problems)
        old = self.__dict__[name]
        object.__setattr__(self, name, value)
        broken = self._broken_rule((), self.values)
        if broken is not None:
            object.__setattr__(self, name, old)
            raise Invalid([broken])
        self._fields_set.add(name)

    @property
    def fields_set(self) -> set[str]:
        """The fields given explicitly (in the data or assigned since), not left at their defaults."""
        return set(self._fields_set)

    def values(self) -> dict[str, Any]:
        """The fields and their values, one level deep."""
        return {name: getattr(self, name) for name in field_types(type(self))}

    def as_dict(self, *, json: bool = False) -> dict[str, Any]:
        """The section as plain data, nested sections too; ``json``: paths as strings, tuples as lists."""
        return typing.cast("dict[str, Any]", _plain(self, json))

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` checked and applied, and the section's rule run again; the other values are
        taken as they are (what was set stays set)."""
        types = field_types(type(self))
        problems: list[Problem] = []
        checked = {name: convert(types[name], value, (name,), problems) if name in types else value
                   for name, value in changes.items()}
        problems.extend(_unknown_keys(changes, types, ()))
        copy = type(self).construct(**{**self.values(), **checked})
        object.__setattr__(copy, "_fields_set", self._fields_set | set(changes))
        if not problems and (broken := copy._broken_rule((), copy.values)) is not None:
            problems.append(broken)
        if problems:
            raise Invalid(problems)
        return copy


def _unknown_keys(data: Mapping[Any, Any], types: Mapping[str, Any], loc: Loc) -> list[Problem]:
    return [Problem((*loc, str(key)), "unknown key", data[key], "unknown") for key in data if key not in types]


def _plain(value: Any, json: bool) -> Any:
    if isinstance(value, Section):
        return {name: _plain(item, json) for name, item in value.values().items()}
    if isinstance(value, dict):
        return {key: _plain(item, json) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(item, json) for item in value]
        return items if json or isinstance(value, list) else tuple(items)
    if json and isinstance(value, Path):
        return str(value)
    return value
