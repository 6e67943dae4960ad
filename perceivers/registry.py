"""Model registry: ``list_models()``, ``create_model(name, **overrides)``.

A variant is a function returning a config; ``create_model`` applies overrides to it
(``config.replace``; nested configs accept dicts, e.g. ``decoder={"num_outputs": 10}``) and
builds the model, optionally on the meta device (``device="meta"``) without allocating memory.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_REGISTRY: dict[str, "ModelEntry"] = {}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build_config: Callable[[], Any]
    model_cls: type[nn.Module]
    num_parameters: int | None
    description: str


def register_model(name: str, *, model_cls: type[nn.Module], num_parameters: int | None = None,
                   description: str = "") -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator for a function returning the variant's config. ``num_parameters`` is the exact
    expected count (tested)."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        _REGISTRY[name] = ModelEntry(name, fn, model_cls, num_parameters, doc)
        return fn

    return wrap


def load_model_families() -> None:
    """Import every model family so its variants and model type are registered."""
    import perceivers.models.ar_variants  # noqa: F401  (registers the Perceiver AR variants)
    import perceivers.models.flow_variants  # noqa: F401  (registers the optical-flow variants)
    import perceivers.models.hip_variants  # noqa: F401  (registers the HiP variants)
    import perceivers.models.language_variants  # noqa: F401  (registers the byte-level language variants)
    import perceivers.models.multimodal_variants  # noqa: F401  (registers the multimodal and audio variants)
    import perceivers.models.variants  # noqa: F401  (registers the variants)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a substring."""
    load_model_families()
    return sorted(n for n in _REGISTRY if pattern is None or pattern in n)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise ``ValueError`` suggesting close names."""
    load_model_families()
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_config(name: str, **overrides: Any) -> Any:
    """The config of a registered variant with ``overrides`` applied."""
    config = get_entry(name).build_config()
    return config.replace(**overrides) if overrides else config


def create_model(name: str, *, device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model. ``device="meta"`` builds it without allocating parameter memory."""
    entry = get_entry(name)
    config = get_config(name, **overrides)
    if device is None:
        return entry.model_cls(config)
    with torch.device(device):
        return entry.model_cls(config)
