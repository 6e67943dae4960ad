"""Training: one engine runs every task, on one process or many (DDP / FSDP2 under ``torchrun``).

- :mod:`~perceivers.training.config`: :class:`EngineConfig`, how to train (optimiser, schedule, precision,
  checkpoints, distribution).
- :mod:`~perceivers.training.task`: :class:`Task`, what to train (model, data, loss, held-out metrics, hooks).
- :mod:`~perceivers.training.loop`: :func:`run_task`, the loop (resume, checkpoints, records, evaluation).
- :mod:`~perceivers.training.tasks`, :mod:`~perceivers.training.hip_mae`: the built-in tasks;
  :mod:`~perceivers.training.losses`: their losses and metrics.
- :mod:`~perceivers.training.recipes`: :class:`Recipe` (a task's settings + engine settings) and ``RECIPES``, the
  functions behind ``perceivers train NAME``; :mod:`~perceivers.training.overrides`: their command-line overrides.
- :mod:`~perceivers.training.runtime`, :mod:`~perceivers.training.dist`, :mod:`~perceivers.training.checkpoint`,
  :mod:`~perceivers.training.optim`, :mod:`~perceivers.training.records`: the loop's parts.
"""

from perceivers.training.config import EngineConfig
from perceivers.training.loop import run_task
from perceivers.training.recipes import RECIPES, Recipe
from perceivers.training.runtime import NonFiniteLossError
from perceivers.training.task import Task

__all__ = ["RECIPES", "EngineConfig", "NonFiniteLossError", "Recipe", "Task", "run_task"]
