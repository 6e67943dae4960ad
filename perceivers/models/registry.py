"""Look-ups in the model registry: ``list_models()``, ``get_config(name)``, ``create_model(name, **overrides)``.

A variant is a function returning a config (registered with :func:`perceivers.core.registry.register_model`);
``create_model`` applies overrides to it (``config.replace``; nested configs accept dicts, e.g.
``decoder={"num_outputs": 10}``) and builds the model, optionally on the meta device (``device="meta"``) without
allocating memory. Importing :mod:`perceivers.models` registers every family first.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.core.registry import VARIANTS, ModelEntry


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a substring."""
    if pattern is not None and not isinstance(pattern, str):
        raise ConfigTypeError(f"pattern must be a str or None, got {type(pattern).__name__}")
    return sorted(n for n in VARIANTS if pattern is None or pattern in n)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise :class:`~perceivers.core.errors.ConfigError` (a
    ``ValueError``) suggesting close names."""
    if not isinstance(name, str):
        raise ConfigTypeError(f"model name must be a str, got {type(name).__name__}")
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, list(VARIANTS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


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
