"""One validation toolkit for every config and settings class, and :class:`ConfigBase`.

Each ``check_*`` raises :class:`~perceivers.core.errors.ConfigError` (wrong value, a ``ValueError``) or
:class:`~perceivers.core.errors.ConfigTypeError` (wrong type, a ``TypeError``) naming the field, the value and what was
expected, e.g. ``num_latents=0 is invalid: expected an int >= 1``; both are
:class:`~perceivers.core.errors.UserError`, which the command line reports in one line. Configs are
``@dataclass(frozen=True, kw_only=True)`` subclasses of :class:`ConfigBase` that call these from ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from perceivers.core.errors import ConfigError, ConfigTypeError


def fail(name: str, value: Any, expected: str) -> None:
    """Raise ``ConfigError("{name}={value!r} is invalid: expected {expected}")`` (a ``ValueError``)."""
    raise ConfigError(f"{name}={value!r} is invalid: expected {expected}")


def check_int(name: str, value: Any, *, minimum: int = 1) -> None:
    """An ``int`` (``bool`` refused) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        fail(name, value, f"an int >= {minimum}")


def check_optional_int(name: str, value: Any, *, minimum: int = 1) -> None:
    """``None`` or an ``int`` at least ``minimum``."""
    if value is not None:
        check_int(name, value, minimum=minimum)


def check_float(name: str, value: Any, *, minimum: float = -math.inf, maximum: float = math.inf,
                min_inclusive: bool = True, max_inclusive: bool = True) -> None:
    """A finite real number (int or float, ``bool`` refused) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
    low_ok = value >= minimum if min_inclusive else value > minimum
    high_ok = value <= maximum if max_inclusive else value < maximum
    if not math.isfinite(value) or not (low_ok and high_ok):
        lo = "" if minimum == -math.inf else f"{minimum} {'<=' if min_inclusive else '<'} "
        hi = "" if maximum == math.inf else f" {'<=' if max_inclusive else '<'} {maximum}"
        fail(name, value, f"a finite float{' with ' + lo + 'x' + hi if lo or hi else ''}")


def check_prob(name: str, value: Any) -> None:
    """A probability in [0, 1) (dropout rates)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        fail(name, value, "a float in [0, 1)")


def check_scale(name: str, value: Any) -> None:
    """A finite positive float (initialisation standard deviations, scales)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
        fail(name, value, "a finite positive float")


def check_bool(name: str, value: Any) -> None:
    """A ``bool`` (``0``/``1`` refused)."""
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")


def check_bools(obj: Any, *names: str) -> None:
    """Each attribute ``names`` of ``obj`` is a ``bool``."""
    for name in names:
        check_bool(name, getattr(obj, name))


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """One of ``choices``."""
    if value not in choices:
        fail(name, value, f"one of {choices}")


def check_divisible(what: str, value: int, by_name: str, by: int) -> None:
    """``value`` divisible by ``by`` (attention widths by head counts)."""
    if value % by:
        raise ConfigError(f"{what}={value} must be divisible by {by_name}={by}")


def check_finite(name: str, array: Any) -> None:
    """``ConfigError`` naming the first NaN or infinite element of ``array`` (a torch tensor or a numpy array of any
    shape), e.g. ``images[12, 0, 3, 5] is nan: expected finite values``; integer arrays always pass."""
    if hasattr(array, "isfinite"):  # a torch tensor (core does not import torch)
        bad = (~array.isfinite()).nonzero()
        if bad.shape[0] == 0:
            return
        index = tuple(int(i) for i in bad[0])
        value = float(array[index] if index else array)
    else:
        import numpy as np

        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.number):
            return
        bad = np.argwhere(~np.isfinite(array))
        if len(bad) == 0:
            return
        index = tuple(int(i) for i in bad[0])
        value = float(array[index])
    where = f"{name}[{', '.join(map(str, index))}]" if index else name
    raise ConfigError(f"{where} is {value}: expected finite values (no NaN or infinity)")


def normalize_int_tuple(obj: Any, name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> None:
    """Validate a non-empty sequence of ints and store it on the frozen ``obj`` as a tuple (``config.json`` holds
    lists)."""
    if value is None and allow_none:
        return
    if not isinstance(value, (tuple, list)) or not value:
        raise ConfigTypeError(f"{name} must be a non-empty tuple of ints, got {value!r}")
    for v in value:
        check_int(name, v, minimum=minimum)
    object.__setattr__(obj, name, tuple(value))


class ConfigBase:
    """``to_dict`` / ``from_dict`` / ``replace`` for nested frozen dataclasses.

    ``_nested`` maps a field name to the config class a ``dict`` in that field is turned into
    (``config.json`` stores nested configs as objects); :meth:`_coerce_nested` does it in ``__post_init__``.
    """

    _nested: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (nested configs as dicts, tuples as tuples)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def _coerce_nested(self, *, optional: tuple[str, ...] = ()) -> None:
        """Turn nested dicts into their config classes; reject other types (``None`` where ``optional``)."""
        for key, sub in self._nested.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                object.__setattr__(self, key, sub.from_dict(value))
            elif not isinstance(value, sub) and not (value is None and key in optional):
                raise ConfigTypeError(f"{key} must be a {sub.__name__} or a dict, got {type(value).__name__}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from a dict of fields; unknown fields are refused, listing the valid ones."""
        if not isinstance(data, dict):
            raise ConfigTypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields {unknown}; valid fields: {sorted(names)}")
        kwargs = dict(data)
        for key, sub in cls._nested.items():
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = sub.from_dict(kwargs[key])
        return cls(**kwargs)

    def replace(self, **changes: Any):
        """A copy with ``changes``; nested configs accept a dict of their own fields to change."""
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown {type(self).__name__} fields {unknown}; valid fields: {sorted(names)}")
        for key, sub in self._nested.items():
            value = changes.get(key)
            current = getattr(self, key)
            if isinstance(value, dict):
                changes[key] = current.replace(**value) if current is not None else sub.from_dict(value)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
