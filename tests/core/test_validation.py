"""The validation toolkit: each check names the field, the value and what was expected."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from perceivers.core import validation as v


def test_check_int_refuses_bools_floats_and_small_values():
    v.check_int("n", 3)
    v.check_int("n", 0, minimum=0)
    with pytest.raises(TypeError, match=r"n must be an int, got bool"):
        v.check_int("n", True)
    with pytest.raises(TypeError, match=r"n must be an int, got float"):
        v.check_int("n", 2.0)
    with pytest.raises(ValueError, match=r"n=0 is invalid: expected an int >= 1"):
        v.check_int("n", 0)


def test_check_optional_int():
    v.check_optional_int("n", None)
    with pytest.raises(ValueError, match="n=-1"):
        v.check_optional_int("n", -1)


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, 1.5])
def test_check_float_bounds_and_finiteness(value):
    with pytest.raises(ValueError, match="lr="):
        v.check_float("lr", value, minimum=0.0, maximum=1.0)


def test_check_float_exclusive_bounds_and_types():
    v.check_float("x", 0.5, minimum=0.0, min_inclusive=False)
    with pytest.raises(ValueError, match=r"0.0 < x"):
        v.check_float("x", 0.0, minimum=0.0, min_inclusive=False)
    with pytest.raises(TypeError, match="x must be a float, got str"):
        v.check_float("x", "0.1")
    with pytest.raises(TypeError):
        v.check_float("x", False)


def test_prob_scale_bool_choice_divisible():
    v.check_prob("p", 0.0)
    with pytest.raises(ValueError, match=r"p=1.0 is invalid: expected a float in \[0, 1\)"):
        v.check_prob("p", 1.0)
    with pytest.raises(ValueError, match="a finite positive float"):
        v.check_scale("s", 0.0)
    with pytest.raises(TypeError, match="b must be a bool, got int"):
        v.check_bool("b", 1)
    with pytest.raises(ValueError, match=r"kind='x' is invalid: expected one of \('a', 'b'\)"):
        v.check_choice("kind", "x", ("a", "b"))
    with pytest.raises(ValueError, match="qk=10 must be divisible by heads=4"):
        v.check_divisible("qk", 10, "heads", 4)


@dataclass(frozen=True, kw_only=True)
class _Inner(v.ConfigBase):
    width: int = 4
    sizes: tuple[int, ...] = (2, 3)

    def __post_init__(self) -> None:
        v.check_int("width", self.width)
        v.normalize_int_tuple(self, "sizes", self.sizes)


@dataclass(frozen=True, kw_only=True)
class _Outer(v.ConfigBase):
    _nested: ClassVar[dict[str, type]] = {"inner": _Inner}
    inner: _Inner = field(default_factory=_Inner)
    name: str = "x"

    def __post_init__(self) -> None:
        self._coerce_nested()


def test_config_base_round_trip_replace_and_unknown_fields():
    config = _Outer(inner=_Inner(width=8, sizes=[5, 6]))
    assert config.inner.sizes == (5, 6)  # lists from config.json become tuples
    assert _Outer.from_dict(config.to_dict()) == config
    assert config.replace(inner={"width": 2}).inner == _Inner(width=2, sizes=(5, 6))
    with pytest.raises(ValueError, match=r"unknown _Outer fields \['bogus'\]"):
        _Outer.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match=r"unknown _Inner fields"):
        config.replace(inner={"nope": 1})
    with pytest.raises(TypeError, match="inner must be a _Inner or a dict, got int"):
        _Outer(inner=3)
    with pytest.raises(TypeError, match="sizes must be a non-empty tuple of ints"):
        _Inner(sizes=())
