"""Command-line overrides of recipes: ``--key value`` / ``--set key=value`` on the fields of a recipe's task and
of its ``engine`` (:class:`EngineConfig`), type-checked from the dataclass annotations."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from perceivers.core.errors import ConfigError
from perceivers.training.recipes import Recipe

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_value(text: str, hint: Any, key: str) -> Any:
    """Convert ``text`` to the annotated type ``hint`` (int, float, bool, str, tuples, ``X | None``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot parse {text!r}")
    if origin is tuple:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0], key) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"{key}={text!r} is invalid: expected {len(args)} comma-separated values")
        return tuple(parse_value(p, a, key) for p, a in zip(parts, args))
    if hint is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{key}={text!r} is invalid: expected true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r} is invalid: expected an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r} is invalid: expected a number") from None
    if hint is str:
        return text
    raise ConfigError(f"{key} cannot be set from the command line (type {hint})")


def _hints(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj) if f.init}


def override_keys(recipe: Recipe) -> dict[str, str]:
    """Every settable key -> where it lives (``task`` or ``engine``); task fields shadow engine fields of the
    same name, which stay reachable as ``engine.NAME``."""
    keys = {f"engine.{k}": "engine" for k in _hints(recipe.engine)}
    keys.update({k: "engine" for k in _hints(recipe.engine)})
    keys.update({k: "task" for k in recipe.task.settings()})
    return keys


def bool_keys(recipe: Recipe) -> set[str]:
    """Keys whose flag may stand alone (``--include-tests`` means ``true``)."""
    out = {k for k, h in _hints(recipe.task).items() if h is bool}
    out |= {k for k, h in _hints(recipe.engine).items() if h is bool}
    return out | {f"engine.{k}" for k in out}


def apply_overrides(recipe: Recipe, pairs: list[tuple[str, str]]) -> Recipe:
    """A new recipe with ``pairs`` of (key, text) applied; unknown keys raise ``ConfigError`` listing the valid ones.
    Keys may be spelled with ``-`` or ``_``, or as one of the task's ``aliases``.

    A run's length is ``steps`` or ``epochs``: setting one clears the recipe's other; setting both (to values other
    than ``none``) is a ``ConfigError``.
    """
    aliases = recipe.task.aliases
    keys = override_keys(recipe)
    task_changes: dict[str, Any] = {}
    engine_changes: dict[str, Any] = {}
    for raw_key, text in pairs:
        key = raw_key.replace("-", "_")
        key = aliases.get(key, key)
        if key not in keys:
            valid = sorted(k for k in keys if not k.startswith("engine.")) + sorted(aliases)
            raise ConfigError(f"unknown setting {raw_key!r} for task {recipe.task.name!r}; valid keys: "
                              f"{', '.join(sorted(set(valid)))}")
        if keys[key] == "task":
            task_changes[key] = parse_value(text, _hints(recipe.task)[key], key)
        else:
            name = key.removeprefix("engine.")
            engine_changes[name] = parse_value(text, _hints(recipe.engine)[name], name)
    if engine_changes.get("steps") is not None and engine_changes.get("epochs") is not None:
        raise ConfigError(f"steps={engine_changes['steps']} and epochs={engine_changes['epochs']} are both given: "
                          "pass one of them (--steps counts optimiser steps, --epochs passes over the training data)")
    for key, other in (("epochs", "steps"), ("steps", "epochs")):
        if engine_changes.get(key) is not None and other not in engine_changes:
            engine_changes[other] = None
    return dataclasses.replace(recipe, task=dataclasses.replace(recipe.task, **task_changes),
                               engine=dataclasses.replace(recipe.engine, **engine_changes))
