"""Settings checked by pydantic, reported as the package's one-line errors.

A settings class is a plain (frozen) dataclass whose field types say what is allowed,
with pydantic's ``Annotated`` constraints and the number types below; pydantic (strict:
no strings read as numbers, no bools as integers) does the checking:

- ``check_fields(self)`` in ``__post_init__`` validates the fields of a directly built
  instance (and turns numpy scalars into plain Python numbers);
- ``validated(cls, raw, source=FILE, section="[name] ")`` builds an instance from a parsed
  TOML table, naming the file and table in errors; unknown keys are errors too;
  ``validate_table`` returns the checked values instead (``only`` some of the fields);
- both raise ``InputError(source, "[section] setting X = Y must be ...")``: one line
  naming the first setting at fault and what it must be (``input_error``).

Checks that relate fields to each other stay in ``__post_init__`` after ``check_fields``.
``FitConfig`` (``cst_neuro.train``) can adopt the same two calls.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, create_model

from cst_neuro.errors import InputError

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """numpy numbers as Python numbers (numpy bools stay, so they are refused as numbers)."""
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        return value.item()
    return value


def _tuple(value: Any) -> Any:
    """A list or 1-D array (TOML and JSON have no tuples) as a tuple."""
    return tuple(value) if isinstance(value, list | np.ndarray) else value


Integer = Annotated[int, BeforeValidator(_plain)]  # an int or numpy integer, never a bool
Real = Annotated[float, BeforeValidator(_plain), Field(allow_inf_nan=False)]  # finite
PositiveInt = Annotated[Integer, Field(ge=1)]
NonNegativeInt = Annotated[Integer, Field(ge=0)]
PositiveReal = Annotated[Real, Field(gt=0)]
NonNegativeReal = Annotated[Real, Field(ge=0)]
Pair = Annotated[tuple[PositiveInt, PositiveInt], BeforeValidator(_tuple)]
Names = Annotated[tuple[str, ...], BeforeValidator(_tuple)]

_REQUIREMENTS = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a table of settings",
    "tuple_type": "must be a list",
    "too_short": "must have {min_length} items",
    "too_long": "must have {max_length} items",
    "none_required": "must be left out",
    "missing": "is missing",
}


def input_error(
    error: ValidationError,
    raw: Mapping[str, Any],
    *,
    source: Any = None,
    section: str = "",
    kind: str = "setting",
    known: Iterable[str] = (),
) -> InputError:
    """One InputError line for the first problem of ``error`` (unknown keys first).

    ``raw`` is what was validated: the message quotes the value as given. ``section``
    prefixes the message (``"[batch] "``), ``kind`` names what a key is (``setting``,
    ``section``) and ``known`` lists the keys allowed, for unknown ones.
    """
    problems = error.errors()
    unknown = [str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden"]
    if unknown:
        expected = f"; expected {', '.join(known)}" if known else ""
        return InputError(source, f"unknown {section}{kind}(s) {', '.join(unknown)}{expected}")
    first = problems[0]
    loc = first["loc"]
    name = str(loc[0]) if loc else "?"
    value = raw.get(name, first.get("input"))
    item = f": item {loc[1]}" if len(loc) > 1 else ""
    return InputError(source, f"{section}{kind} {name} = {value!r}{item} {_requirement(first)}")


def _requirement(problem: Any) -> str:
    ctx = problem.get("ctx") or {}
    kind = problem["type"]
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace(" or ", ", ").replace("'", "")
        return f"must be one of {choices}"
    if kind == "value_error":
        return str(ctx.get("error", problem["msg"]))
    if kind in _REQUIREMENTS:
        return _REQUIREMENTS[kind].format(**ctx)
    return f"is not valid ({problem['msg']})"


@functools.cache
def _model(cls: type, only: tuple[str, ...] | None = None) -> Any:
    """The pydantic model of a dataclass's fields (or ``only`` those), strict, built once."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or (only is not None and f.name not in only):
            continue
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (hints[f.name], ...)
    config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Settings", __config__=config, **fields)


def validate_table(
    cls: type,
    raw: Any,
    *,
    only: tuple[str, ...] | None = None,
    source: Any = None,
    section: str = "",
    kind: str = "setting",
) -> dict[str, Any]:
    """The checked values of the settings table ``raw`` for dataclass ``cls``.

    Keys not in ``raw`` get their defaults; ``only`` restricts the table to some of the
    fields (a TOML table that sets part of a class). An unknown key, a value of the wrong
    type or out of range is an InputError naming ``source`` (see ``input_error``).
    """
    if not isinstance(raw, Mapping):
        where = f"{section.strip()} " if section else ""
        raise InputError(source, f"{where}must be a table of settings, not {raw!r}")
    model = _model(cls, only)
    try:
        return dict(model.model_validate(dict(raw)))
    except ValidationError as e:
        raise input_error(
            e, raw, source=source, section=section, kind=kind, known=model.model_fields
        ) from None


def validated(cls: type[T], raw: Any, *, source: Any = None, section: str = "") -> T:
    """A ``cls`` (a dataclass) built from the settings table ``raw`` (``validate_table``)."""
    return cls(**validate_table(cls, raw, source=source, section=section))


def check_fields(obj: Any, *, source: Any = None, section: str = "") -> None:
    """Validate the fields of dataclass instance ``obj``; store the plain, checked values.

    Call it first in ``__post_init__``: a directly built instance is checked like one
    read from a file, and numpy numbers become Python numbers.
    """
    raw = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    for name, value in validate_table(type(obj), raw, source=source, section=section).items():
        object.__setattr__(obj, name, value)  # frozen dataclasses too
