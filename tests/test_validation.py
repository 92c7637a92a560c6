"""Settings checked by pydantic: one error line naming the file, table, setting and rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cst_neuro.errors import InputError
from cst_neuro.validation import (
    NonNegativeReal,
    Pair,
    PositiveInt,
    check_fields,
    validate_table,
    validated,
)


@dataclass(frozen=True)
class Example:
    count: PositiveInt = 1
    scale: NonNegativeReal = 0.5
    mode: Literal["fast", "slow"] = "fast"
    size: Pair | None = None
    flag: bool = False

    def __post_init__(self) -> None:
        check_fields(self)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"count": 0}, "setting count = 0 must be >= 1"),
        ({"count": True}, "setting count = True must be a whole number"),
        ({"count": 2.0}, "setting count = 2.0 must be a whole number"),
        ({"count": "3"}, "setting count = '3' must be a whole number"),
        ({"scale": -1}, "setting scale = -1 must be >= 0"),
        ({"scale": float("nan")}, "setting scale = nan must be a finite number"),
        ({"mode": "medium"}, "setting mode = 'medium' must be one of fast, slow"),
        ({"size": [1, 0]}, "setting size = [1, 0]: item 1 must be >= 1"),
        ({"flag": "yes"}, "setting flag = 'yes' must be true or false"),
        ({"cuont": 1, "mdoe": 2}, "unknown [t] setting(s) cuont, mdoe; expected count, scale"),
    ],
)
def test_one_line_naming_file_table_and_setting(raw: dict, message: str) -> None:
    with pytest.raises(InputError) as info:
        validated(Example, raw, source="run.toml", section="[t] ")
    text = str(info.value)
    assert text.startswith("run.toml: ") and message.removeprefix("[t] ") in text
    assert "\n" not in text and info.value.path == "run.toml"


def test_direct_construction_is_checked_and_numpy_becomes_python() -> None:
    ex = Example(count=np.int64(3), scale=np.float32(2.0), size=np.array([4, 5]))
    assert (type(ex.count), type(ex.scale), ex.size) == (int, float, (4, 5))
    with pytest.raises(InputError, match=r"count = np\.True_ must be a whole number"):
        Example(count=np.bool_(True))


def test_tables_may_set_part_of_a_class() -> None:
    assert validate_table(Example, {"mode": "slow"}, only=("mode",)) == {"mode": "slow"}
    with pytest.raises(InputError, match="unknown setting\\(s\\) count; expected mode"):
        validate_table(Example, {"count": 2}, only=("mode",))
    with pytest.raises(InputError, match=r"\[t\] must be a table of settings, not 3"):
        validate_table(Example, 3, section="[t] ")


@given(st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.booleans(), st.none()))
def test_any_value_is_accepted_or_one_clean_error(value: object) -> None:
    try:
        ex = validated(Example, {"count": value})
    except InputError as e:
        assert str(e).startswith("setting count = ") and "\n" not in str(e)
    else:
        assert type(ex.count) is int and ex.count >= 1
