"""The training engine behind ``perceivers train RECIPE``: one loop for every recipe, on one process or many.

A :class:`Task` knows its data and loss; :class:`EngineConfig` says how to optimise and distribute;
:func:`run_task` trains, checkpoints, logs, evaluates and saves. Under ``torchrun`` with ``strategy='ddp'`` or
``'fsdp'`` every process runs the same call; the global batch is split over ranks and accumulation steps.

Determinism: the model is built after seeding with ``seed``; the data order of epoch ``e`` is a seeded permutation
(a pure function of ``seed`` and ``e``) and the position in it is the step counter; each rank's RNG streams
(dropout, augmentation) are seeded from ``seed`` and its rank, and saved in every checkpoint. Resuming on CPU
therefore ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from perceivers.training import dist as D
from perceivers.training.optim import OPTIMIZERS, SCHEDULES


class Task(Protocol):
    """One per recipe: data and loss, nothing about optimisation or distribution."""

    name: str

    def build_model(self) -> nn.Module:
        """A fresh model (the engine seeds the RNG before calling)."""

    def train_dataset(self) -> Dataset:
        """Map-style and deterministic: ``len()`` and ``[i]`` -> tensors / tuples / dicts of tensors."""

    def training_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Mean loss over the (default-collated, on-device) ``batch`` and extra metrics to log. Random
        augmentation or masking draws from the global torch RNG (seeded per rank, saved in checkpoints)."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of the plain (unwrapped) model; called on rank 0 only."""

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """Optional extras after training (e.g. image grids); may do nothing."""


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/inf loss or gradient norm (``on_nonfinite='stop'``)."""


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How to train: optimisation, schedule, precision, checkpointing and distribution; validated on construction.

    ``steps`` (optimiser steps) wins over ``epochs`` when set. ``batch_size`` is the global batch: it is split
    over processes and ``grad_accum`` micro-steps. Warm-up lasts ``warmup_steps`` if set, else
    ``warmup_fraction`` of training. ``checkpoint_every=0`` checkpoints only at the end (and on Ctrl-C).
    """

    steps: int | None = None
    epochs: int | None = 1
    batch_size: int = 64
    drop_last: bool = False
    lr: float = 1e-3
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None  # None: 1e-8 for AdamW, 1e-6 for LAMB (official)
    schedule: str = "cosine"
    warmup_steps: int | None = None
    warmup_fraction: float = 0.0
    constant_fraction: float = 0.5  # constant_cosine: share of training at the flat LR
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    label_smoothing: float = 0.0
    grad_accum: int = 1
    precision: str = "fp32"
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    log_every: int = 10
    eval_every: int = 0
    on_nonfinite: str = "stop"
    device: str = "cpu"
    strategy: str = "none"
    find_unused_parameters: bool = False  # DDP: for models with parameters some steps leave unused

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")

        def is_int(v: Any, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check("steps", self.steps is None or is_int(self.steps, 1), "an int >= 1 or None")
        check("epochs", self.epochs is None or is_int(self.epochs, 1), "an int >= 1 or None")
        if self.steps is None and self.epochs is None:
            raise ValueError("steps=None and epochs=None: set one of them")
        for name in ("batch_size", "grad_accum", "keep_last", "log_every"):
            check(name, is_int(getattr(self, name), 1), "an int >= 1")
        for name in ("checkpoint_every", "eval_every", "seed"):
            check(name, is_int(getattr(self, name), 0), "an int >= 0")
        check("warmup_steps", self.warmup_steps is None or is_int(self.warmup_steps, 0), "an int >= 0 or None")
        check("lr", is_num(self.lr) and self.lr > 0, "a positive float")
        for name in ("weight_decay", "grad_clip"):
            check(name, is_num(getattr(self, name)) and getattr(self, name) >= 0, "a float >= 0")
        for name in ("warmup_fraction", "label_smoothing", "constant_fraction"):
            check(name, is_num(getattr(self, name)) and 0 <= getattr(self, name) < 1, "a float in [0, 1)")
        check("betas", len(self.betas) == 2 and all(is_num(b) and 0 <= b < 1 for b in self.betas),
              "two floats in [0, 1)")
        check("eps", self.eps is None or (is_num(self.eps) and self.eps > 0), "a positive float or None")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", ("fp32", "bf16")),
                              ("on_nonfinite", ("stop", "skip")), ("strategy", D.STRATEGIES)):
            check(name, getattr(self, name) in allowed, f"one of {allowed}")
        for name in ("drop_last", "activation_checkpointing", "compile", "find_unused_parameters"):
            check(name, isinstance(getattr(self, name), bool), "a bool")
        check("device", isinstance(self.device, str) and bool(self.device), "a torch device string or 'auto'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``logits (B, K)`` against ``labels (B,)``, computed in float32."""
    return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


class DataOrder:
    """Global batches: epoch ``e`` visits a permutation seeded by ``(seed, e)``, ``batch_size`` items per step."""

    def __init__(self, size: int, batch_size: int, *, seed: int, drop_last: bool) -> None:
        if size < 1:
            raise ValueError("the task's train_dataset() is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.steps_per_epoch = size // batch_size if drop_last else math.ceil(size / batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size={batch_size} exceeds the dataset size {size} with drop_last=True")
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> Tensor:
        """Dataset indices ``(n,)`` of global step ``step`` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
        return self._perm[k * self.batch_size:(k + 1) * self.batch_size]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def seed_all(seed: int) -> None:
    """Seed torch (every device), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block (evaluation) without disturbing the training RNG streams."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


class StopRequest:
    """SIGINT/SIGTERM set a flag: the loop finishes its step, saves a checkpoint and exits. In one process a second
    Ctrl-C interrupts at once; under torchrun repeated signals are ignored (the launcher forwards them)."""

    def __init__(self, world_size: int) -> None:
        self.requested, self.world_size = False, world_size
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.world_size == 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_task(task: Task, config: EngineConfig, out_dir: str | Path, *, resume: bool | str | Path = False,
             progress: bool = True, log=print) -> dict[str, Any]:
    """Train ``task`` with ``config``; write ``out_dir/{checkpoints/, metrics.csv, eval.csv, model/, metrics.json}``.

    ``resume=True`` continues from the latest checkpoint under ``out_dir/checkpoints`` (a path: that checkpoint).
    Returns the final metrics on rank 0 (``{}`` on other ranks), or ``{"interrupted": True, ...}`` after Ctrl-C /
    SIGTERM (every rank)."""
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
    from perceivers.training.loop import (
        _Run,  # the loop itself; it builds on the definitions above
    )

    ctx = D.setup(config.strategy, config.device)
    try:
        return _Run(task, config, Path(out_dir), ctx, log if ctx.is_main else (lambda *a, **k: None)).run(
            resume=resume, progress=progress)
    finally:
        ctx.close()



class Recipe(Protocol):
    """A frozen dataclass of a task's settings plus ``engine: EngineConfig``; registered in ``recipes.RECIPES``.

    Optional: ``aliases`` (class attribute: command-line name -> field) and ``summary(result) -> str``.
    """

    engine: EngineConfig

    def task(self) -> Task:
        """The task these settings describe."""


def run_recipe(recipe: Recipe, out_dir: str | Path, *, resume: bool | str | Path = False, progress: bool = True,
               log=print) -> dict[str, Any]:
    """``run_task(recipe.task(), recipe.engine, out_dir)`` and a one-line summary on rank 0."""
    result = run_task(recipe.task(), recipe.engine, out_dir, resume=resume, progress=progress, log=log)
    if result and not result.get("interrupted"):
        summary = getattr(recipe, "summary", None)
        if callable(summary):
            log(summary(result))
        log(f"saved model to {Path(out_dir) / 'model'} and metrics to {Path(out_dir) / 'metrics.json'}")
    return result
