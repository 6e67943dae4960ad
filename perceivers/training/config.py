"""How to train: :class:`EngineConfig`, the engine's settings (optimisation, schedule, precision, checkpointing,
distribution). What to train (model, data, loss) is a :class:`~perceivers.training.task.Task`'s."""

from __future__ import annotations

from dataclasses import dataclass

from perceivers.core.errors import ConfigError
from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_float,
    check_int,
    check_optional_int,
    check_prob,
    fail,
)
from perceivers.training.dist import STRATEGIES
from perceivers.training.optim import OPTIMIZERS, SCHEDULES

PRECISIONS = ("fp32", "bf16")
ON_NONFINITE = ("stop", "skip")


@dataclass(frozen=True, kw_only=True)
class EngineConfig(ConfigBase):
    """How to train: optimisation, schedule, precision, checkpointing and distribution; validated on construction.

    ``steps`` (optimiser steps) wins over ``epochs`` when set. ``batch_size`` is the global batch: it is split
    over processes and ``grad_accum`` micro-steps. Warm-up lasts ``warmup_steps`` if set, else
    ``warmup_fraction`` of training. ``checkpoint_every=0`` checkpoints only at the end (and on Ctrl-C).
    Label smoothing is not here: a loss is its task's (see the digits and HiP fine-tuning tasks).
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
        check_optional_int("steps", self.steps)
        check_optional_int("epochs", self.epochs)
        if self.steps is None and self.epochs is None:
            raise ConfigError("steps=None and epochs=None: set one of them")
        for name in ("batch_size", "grad_accum", "keep_last", "log_every"):
            check_int(name, getattr(self, name))
        for name in ("checkpoint_every", "eval_every", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        check_optional_int("warmup_steps", self.warmup_steps, minimum=0)
        check_float("lr", self.lr, minimum=0.0, min_inclusive=False)
        for name in ("weight_decay", "grad_clip"):
            check_float(name, getattr(self, name), minimum=0.0)
        for name in ("warmup_fraction", "constant_fraction"):
            check_prob(name, getattr(self, name))
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            fail("betas", self.betas, "two floats in [0, 1)")
        object.__setattr__(self, "betas", tuple(self.betas))  # config.json / meta.json hold a list
        for beta in self.betas:
            check_prob("betas", beta)
        if self.eps is not None:
            check_float("eps", self.eps, minimum=0.0, min_inclusive=False)
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("on_nonfinite", ON_NONFINITE), ("strategy", STRATEGIES)):
            check_choice(name, getattr(self, name), allowed)
        check_bools(self, "drop_last", "activation_checkpointing", "compile", "find_unused_parameters")
        if not isinstance(self.device, str) or not self.device:
            fail("device", self.device, "a torch device string or 'auto'")
