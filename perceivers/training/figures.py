"""Helpers of the pictures drawn from a trained model (``perceivers plot attention`` / ``predictions``): matplotlib
on request, the output path's checks, an atomic save, and the recipe whose data a checkpoint reads.

A missing matplotlib, an output path that cannot be written and a checkpoint that fits none of the recipes are
:class:`~perceivers.core.errors.UserError` (``ConfigError`` naming the flag).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from torch import nn

from perceivers.core.errors import ConfigError
from perceivers.core.files import atomic_write, bytes_writer
from perceivers.core.validation import check_choice
from perceivers.training.plot import check_output, pyplot  # noqa: F401 (re-exported for the picture modules)
from perceivers.training.recipes import RECIPES
from perceivers.training.task import Task, model_kind


def save_figure(fig: Any, target: Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``target`` atomically (a reader never sees half a file) and close it."""
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=target.suffix.lstrip(".").lower(), dpi=dpi)
    finally:
        plt.close(fig)
    try:
        atomic_write(target, bytes_writer(buffer.getvalue()))
    except OSError as exc:
        raise ConfigError(f"--out {target}: cannot write it: {exc}") from exc
    return target


def task_for_checkpoint(model: nn.Module, recipe: str | None, choices: tuple[str, ...], what: str) -> Task:
    """The task of ``recipe`` (default: the first of ``choices`` whose task fits ``model``), set up for the model
    (its ``for_model``); ``ConfigError`` naming ``--recipe`` / ``--checkpoint`` when the model does not fit."""
    config = getattr(model, "config", None)
    if recipe is not None:
        check_choice("--recipe", recipe, choices)
        task = RECIPES[recipe]().task
        if not task.fits(config):
            raise ConfigError(f"--checkpoint is a {model_kind(config)}; {what} with --recipe {recipe} needs a "
                              f"{task.model_kind}")
        return task.for_model(model)
    for name in choices:
        task = RECIPES[name]().task
        if task.fits(config):
            return task.for_model(model)
    raise ConfigError(f"--checkpoint is a {model_kind(config)}; {what} draws a model of the recipes "
                      f"{', '.join(choices)} (pass --recipe to say which)")
