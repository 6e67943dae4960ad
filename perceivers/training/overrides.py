"""Command-line overrides of recipes: ``--key value`` / ``--set key=value`` on the recipe's own fields and on its
``engine`` (:class:`EngineConfig`) fields, type-checked from the dataclass annotations."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from perceivers.training.engine import EngineConfig

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse(text: str, hint: Any, key: str) -> Any:
    """Convert ``text`` to the annotated type ``hint`` (int, float, bool, str, tuples, ``X | None``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _parse(text, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{key}: cannot parse {text!r}")
    if origin is tuple:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(p, args[0], key) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"{key}={text!r} is invalid: expected {len(args)} comma-separated values")
        return tuple(_parse(p, a, key) for p, a in zip(parts, args))
    if hint is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{key}={text!r} is invalid: expected true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}={text!r} is invalid: expected an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}={text!r} is invalid: expected a number") from None
    if hint is str:
        return text
    raise ValueError(f"{key} cannot be set from the command line (type {hint})")


def _hints(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj) if f.init}


def override_keys(recipe: Any) -> dict[str, str]:
    """Every settable key -> where it lives (``recipe`` or ``engine``); recipe fields shadow engine fields of the
    same name, which stay reachable as ``engine.NAME``."""
    keys = {f"engine.{k}": "engine" for k in _hints(recipe.engine)}
    keys.update({k: "engine" for k in _hints(recipe.engine)})
    keys.update({k: "recipe" for k in _hints(recipe) if k != "engine"})
    return keys


def bool_keys(recipe: Any) -> set[str]:
    """Keys whose flag may stand alone (``--include-tests`` means ``true``)."""
    out = {k for k, h in _hints(recipe).items() if h is bool}
    out |= {k for k, h in _hints(recipe.engine).items() if h is bool}
    return out | {f"engine.{k}" for k in out}


def apply_overrides(recipe: Any, pairs: list[tuple[str, str]]) -> Any:
    """A new recipe with ``pairs`` of (key, text) applied; unknown keys raise ``ValueError`` listing the valid ones.

    Setting ``epochs`` without ``steps`` clears ``steps`` (steps win over epochs otherwise).
    """
    aliases: dict[str, str] = dict(getattr(recipe, "aliases", {}) or {})
    keys = override_keys(recipe)
    recipe_changes: dict[str, Any] = {}
    engine_changes: dict[str, Any] = {}
    for raw_key, text in pairs:
        key = raw_key.replace("-", "_")
        key = aliases.get(key, key)
        if key not in keys:
            valid = sorted(k for k in keys if not k.startswith("engine.")) + sorted(aliases)
            raise ValueError(f"unknown setting {raw_key!r} for recipe {type(recipe).__name__}; valid keys: "
                             f"{', '.join(sorted(set(valid)))}")
        if keys[key] == "recipe":
            recipe_changes[key] = _parse(text, _hints(recipe)[key], key)
        else:
            name = key.removeprefix("engine.")
            engine_changes[name] = _parse(text, _hints(recipe.engine)[name], name)
    if "epochs" in engine_changes and "steps" not in engine_changes:
        engine_changes["steps"] = None
    engine = dataclasses.replace(recipe.engine, **engine_changes) if engine_changes else recipe.engine
    if not isinstance(engine, EngineConfig):
        raise TypeError(f"{type(recipe).__name__}.engine must be an EngineConfig")
    return dataclasses.replace(recipe, engine=engine, **recipe_changes)
