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


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device``; ``ConfigTypeError`` / ``ConfigError`` naming ``name`` for what torch does not
    know or this machine does not have (CUDA without a GPU, ``cuda:3`` on a 2-GPU machine, MPS elsewhere)."""
    if not isinstance(device, (str, torch.device)):
        raise ConfigTypeError(f"{name} must be a str or torch.device such as 'cpu' or 'cuda:0', got "
                              f"{type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{name}={device!r} is not a torch device: expected e.g. 'cpu', 'cuda', 'cuda:1' or "
                          "'meta'") from exc
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} CUDA devices "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name}={device!r}: MPS is not available on this machine")
    return dev


def create_model(name: str, *, device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model. ``device="meta"`` builds it without allocating parameter memory; a device this
    machine does not have is a :class:`~perceivers.core.errors.ConfigError` (see :func:`check_device`)."""
    entry = get_entry(name)
    if device is not None:
        check_device(device)
    config = get_config(name, **overrides)
    if device is None:
        return entry.model_cls(config)
    with torch.device(device):
        return entry.model_cls(config)
