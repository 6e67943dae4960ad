"""Recipes: a task's settings plus the engine's, as data. ``perceivers train NAME [--key value ...]`` runs
``RECIPES[NAME]()`` on the engine after applying the overrides (:mod:`perceivers.training.overrides`).

A recipe is a function returning a :class:`Recipe`; there is no recipe class per task. To run one from Python::

    recipe = digits()
    run_task(recipe.task, recipe.engine, "runs/digits")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perceivers.core.errors import ConfigTypeError
from perceivers.training.config import EngineConfig
from perceivers.training.hip_mae import HiPFinetuneTask, HiPMAETask
from perceivers.training.task import Task
from perceivers.training.tasks import CopyTask, DigitsTask, TextTask


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What to train (``task``: its settings are the task's fields) and how (``engine``)."""

    task: Task
    engine: EngineConfig

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):
            raise ConfigTypeError(f"task must be a perceivers.training.task.Task, got {type(self.task).__name__}")
        if not isinstance(self.engine, EngineConfig):
            raise ConfigTypeError(f"engine must be an EngineConfig, got {type(self.engine).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The task's settings and ``engine``: what ``--print-config`` shows."""
        return {**self.task.settings(), "engine": self.engine.to_dict()}


def digits() -> Recipe:
    """Perceiver IO classifier on scikit-learn's 8x8 digits from raw pixels + 2-D Fourier features (80 epochs)."""
    return Recipe(task=DigitsTask(), engine=EngineConfig(
        epochs=80, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_fraction=0.1, grad_clip=1.0,
        checkpoint_every=460, log_every=23, eval_every=230))


def text() -> Recipe:
    """Byte-level Perceiver AR (1,024 context, 128 latents) on the Python standard library's sources (300 steps)."""
    return Recipe(task=TextTask(), engine=EngineConfig(
        steps=300, epochs=None, batch_size=16, lr=2e-3, weight_decay=0.01, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=100, log_every=10, eval_every=100))


def copy() -> Recipe:
    """Perceiver AR on the official synthetic copy task at length 64 (1,000 steps)."""
    return Recipe(task=CopyTask(), engine=EngineConfig(
        steps=1000, epochs=None, batch_size=32, lr=2e-3, weight_decay=0.01, warmup_fraction=0.1, grad_clip=1.0,
        checkpoint_every=500, log_every=20, eval_every=250))


def hip_mae() -> Recipe:
    """MAE pretraining of ``hip-mae-digits`` on the digits' training split (1,200 steps x 64, ~3 minutes on one
    free CPU core); writes ``reconstructions.png`` next to the model."""
    return Recipe(task=HiPMAETask(), engine=EngineConfig(
        steps=1200, epochs=None, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=400, log_every=20))


def hip_mae_finetune() -> Recipe:
    """The pooled HiP classifier on the digits with the position tables of ``runs/hip-mae/model``
    (``--positions random|fourier`` for the baselines)."""
    return Recipe(task=HiPFinetuneTask(pretrained="runs/hip-mae/model"), engine=EngineConfig(
        steps=800, epochs=None, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_fraction=0.1, grad_clip=1.0,
        checkpoint_every=400, log_every=20))


RECIPES: dict[str, Callable[[], Recipe]] = {"digits": digits, "text": text, "copy": copy, "hip-mae": hip_mae,
                                           "hip-mae-finetune": hip_mae_finetune}
