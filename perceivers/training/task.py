"""What to train: the :class:`Task` base class (model, data, loss, held-out metrics) that the engine runs.

A task knows nothing of optimisation or distribution (that is :class:`~perceivers.training.config.EngineConfig`).
The built-in tasks are frozen dataclasses of their settings, validated on construction; a recipe pairs one with
engine settings (:mod:`perceivers.training.recipes`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.utils.data import Dataset

from perceivers.core.validation import fail
from perceivers.models import get_config, list_models
from perceivers.training.dist import block_modules


def model_config(field: str, name: Any, fits: Callable[[Any], bool], expected: str, **overrides: Any) -> Any:
    """The config of the registered model ``name`` (a task's ``field`` setting, e.g. ``model``) with ``overrides``.

    :class:`~perceivers.core.errors.ConfigError` naming ``field`` unless ``name`` is registered and its config
    ``fits`` the task (checked before the overrides, which assume the right family); the message says what was
    ``expected`` and lists the registered models that fit."""
    names = list_models()
    if name in names and fits(get_config(name)):
        return get_config(name, **overrides)
    fitting = [n for n in names if fits(get_config(n))]
    fail(field, name, f"a registered {expected}: {', '.join(fitting) or 'none is registered'}")


class Task(ABC):
    """One per recipe: data and loss. Subclasses implement the four abstract methods; the other methods are hooks
    with defaults that do nothing (or the generic thing) and may be overridden."""

    name: ClassVar[str] = "task"
    aliases: ClassVar[dict[str, str]] = {}  # command-line spelling -> settings field (``latents`` -> ``num_latents``)

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (the engine seeds the RNG before calling)."""

    @abstractmethod
    def train_dataset(self, seed: int) -> Dataset:
        """Map-style and deterministic: ``len()`` and ``[i]`` -> tensors / tuples / dicts of tensors. ``seed`` is the
        engine's: tasks that generate their data (the copy task) seed it with it; others ignore it."""

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Mean loss over the (default-collated, on-device) ``batch`` and extra metrics to log. ``model`` may be
        wrapped (DDP, FSDP, compiled). Random augmentation or masking draws from the global torch RNG (seeded per
        rank, saved in checkpoints)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of the plain (unwrapped) model; called on rank 0 only."""

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The units of activation checkpointing and FSDP sharding; default: the outermost ``*Block`` modules."""
        return block_modules(model)

    def describe(self) -> dict[str, Any]:
        """Extra entries for ``metrics.json`` (the task's settings, its data split); default none."""
        return {}

    def summary(self, result: dict[str, Any]) -> str:
        """One line about a finished run's ``result`` (``metrics.json``) for the log; ``""`` logs nothing."""
        return ""

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """Extras after training (e.g. an image grid in ``out_dir``); called on rank 0; default nothing."""

    def settings(self) -> dict[str, Any]:
        """The task's settings by name: the init fields of a dataclass task (what ``--print-config`` shows and the
        command line overrides); none otherwise."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
