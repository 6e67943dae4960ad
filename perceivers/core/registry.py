"""The one model registry: named variants (a function returning a config) and model types (the class that
``config.json``'s ``model_type`` names).

Model families fill it on import (``@register_model`` on a variant function, ``model_type=`` on a
:class:`~perceivers.models.base.PerceiverModel` subclass); :mod:`perceivers.models` imports every family and
offers the look-ups (``list_models``, ``create_model``, ``from_pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: ``build_config()`` returns its config, ``model_cls(config)`` builds it."""

    name: str
    build_config: Callable[[], Any]
    model_cls: type
    num_parameters: int | None
    description: str


VARIANTS: dict[str, ModelEntry] = {}
MODEL_TYPES: dict[str, type] = {}


def register_model(name: str, *, model_cls: type, num_parameters: int | None = None,
                   description: str = "") -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator for a function returning a variant's config. ``num_parameters`` is the exact expected count
    (tested); the description defaults to the whole first paragraph of the function's docstring."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        if name in VARIANTS:
            raise ValueError(f"model {name!r} is already registered")
        doc = description or " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        VARIANTS[name] = ModelEntry(name, fn, model_cls, num_parameters, doc)
        return fn

    return wrap


def register_model_type(name: str, cls: type) -> None:
    """Record ``cls`` as the class that rebuilds folders whose ``config.json`` says ``model_type=name``."""
    if MODEL_TYPES.get(name, cls) is not cls:
        raise ValueError(f"model type {name!r} is already registered to {MODEL_TYPES[name].__name__}")
    MODEL_TYPES[name] = cls
