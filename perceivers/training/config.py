"""How to train: :class:`EngineConfig`, the engine's settings (optimisation, schedule, precision, checkpointing,
distribution). What to train (model, data, loss) is a :class:`~perceivers.training.task.Task`'s."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    The run lasts ``steps`` optimiser steps or ``epochs`` passes over the training data: set at most one of them
    (both is a ``ConfigError``; neither means one epoch). ``batch_size`` is the global batch: it is split
    over processes and ``grad_accum`` micro-steps. Warm-up lasts ``warmup_steps`` if set, else
    ``warmup_fraction`` of training. ``checkpoint_every=0`` checkpoints only at the end (and on Ctrl-C).
    Label smoothing is not here: a loss is its task's (see the digits and HiP fine-tuning tasks).
    ``fused_optimizer`` runs AdamW as one fused kernel where PyTorch has it (about 5x faster than the per-tensor
    loop on CPU); ``False`` keeps the per-tensor loop, whose rounding does not depend on how parameters are
    sharded, so that an FSDP run equals a one-process run bit for bit (with the fused kernel, a 2-process FSDP2 run
    differs from the one-process run in the last bits).

    ``collective_timeout`` (seconds) bounds every wait on the other processes (joining the group, all-reduce,
    barrier): a process that died or froze ends the others with one error after at most that long.
    ``max_skip_fraction``: with ``on_nonfinite='skip'``, the run stops (as a non-finite loss does under ``'stop'``)
    once more than this fraction of its steps were skipped.
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 64
    drop_last: bool = False
    lr: float = 1e-3
    optimizer: str = "adamw"
    fused_optimizer: bool = True  # AdamW only
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
    max_skip_fraction: float = 0.1
    device: str = "cpu"
    strategy: str = "none"
    find_unused_parameters: bool = False  # DDP: for models with parameters some steps leave unused
    collective_timeout: float = 600.0  # NCCL's default; gloo's is 30 minutes

    def __post_init__(self) -> None:
        check_optional_int("steps", self.steps)
        check_optional_int("epochs", self.epochs)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(f"steps={self.steps} and epochs={self.epochs} are both set: set one of them (steps "
                              "counts optimiser steps, epochs passes over the training data)")
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
        check_float("max_skip_fraction", self.max_skip_fraction, minimum=0.0, maximum=1.0)
        check_float("collective_timeout", self.collective_timeout, minimum=0.0, min_inclusive=False)
        if self.eps is not None:
            check_float("eps", self.eps, minimum=0.0, min_inclusive=False)
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("on_nonfinite", ON_NONFINITE), ("strategy", STRATEGIES)):
            check_choice(name, getattr(self, name), allowed)
        check_bools(self, "drop_last", "fused_optimizer", "activation_checkpointing", "compile",
                    "find_unused_parameters")
        if not isinstance(self.device, str) or not self.device:
            fail("device", self.device, "a torch device string or 'auto'")

    def num_steps(self, steps_per_epoch: int) -> int:
        """The run's length in optimiser steps: ``steps``, else ``epochs`` (default 1) x ``steps_per_epoch``."""
        return self.steps if self.steps is not None else (self.epochs or 1) * steps_per_epoch


#: Engine settings that change what a run computes: a resumed run must keep them (unless allowed, see
#: :func:`check_resume_settings`). The others (logging, checkpoint and evaluation intervals, device, compile,
#: activation checkpointing, timeouts) may change freely; strategy and world size are checked by the checkpoint.
RUN_SETTINGS = ("steps", "epochs", "batch_size", "drop_last", "lr", "optimizer", "fused_optimizer", "betas", "eps",
                "schedule",
                "warmup_steps", "warmup_fraction", "constant_fraction", "weight_decay", "grad_clip", "grad_accum",
                "precision", "seed")


def settings_record(engine: EngineConfig, task_name: str, task_settings: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of a run's settings (``meta.json``'s ``config`` and ``task``), as plain JSON."""
    plain = json.loads(json.dumps(task_settings, default=str))
    return {"config": engine.to_dict(), "task": {"name": task_name, "settings": plain}}


def _run_values(engine: dict[str, Any]) -> dict[str, Any]:
    values = {k: engine[k] for k in RUN_SETTINGS if k in engine}
    if values.get("steps") is not None:
        values["epochs"] = None  # older checkpoints recorded epochs=1 beside steps, which won
    elif "epochs" in values and values["epochs"] is None:
        values["epochs"] = 1
    return json.loads(json.dumps(values))


def check_resume_settings(meta: dict[str, Any], now: dict[str, Any], file: Path, allow_change: Iterable[str],
                          log: Any) -> None:
    """Compare a checkpoint's recorded settings (``meta``, see :func:`settings_record`) with this run's (``now``).

    A changed key is a :class:`~perceivers.core.errors.ConfigError` listing every change ``old -> new``, unless
    ``allow_change`` names it (``steps`` and ``epochs`` go together); ``optimizer`` never changes (its state does
    not carry over). Task keys are named as on the command line, engine keys likewise, or ``engine.KEY`` where the
    task has a setting of the same name. A checkpoint without recorded settings (an older version) is resumed
    with a warning through ``log``."""
    task_now = now["task"]["settings"]
    names = {**{(f"engine.{k}" if k in task_now else k): ("config", k) for k in RUN_SETTINGS},
             **{k: ("task", k) for k in task_now}}
    allowed = {str(k).replace("-", "_") for k in allow_change}
    unknown = sorted(allowed - set(names))
    if unknown:
        raise ConfigError(f"allow_change={unknown} is invalid: expected settings of this run: {', '.join(sorted(names))}")
    if "optimizer" in allowed or "engine.optimizer" in allowed:
        raise ConfigError("allow_change cannot include optimizer: the checkpoint holds that optimiser's state, "
                          "which another one cannot use; start a new run (another --out) instead")
    if {"steps", "epochs", "engine.steps", "engine.epochs"} & allowed:
        allowed |= {k for k in names if k.removeprefix("engine.") in ("steps", "epochs")}
    old_engine, old_task = meta.get("config"), meta.get("task")
    if old_engine is None or old_task is None:
        log(f"warning: {file} records no {'settings' if old_engine is None else 'task settings'} (written by an "
            "older version): they are not compared with this run's")
    old = {"config": _run_values(old_engine or {}), "task": (old_task or {}).get("settings", {})}
    new = {"config": _run_values(now["config"]), "task": json.loads(json.dumps(task_now, default=str))}
    if old_task is not None and old_task.get("name") != now["task"]["name"]:
        raise ConfigError(f"{file}: the checkpoint is of task {old_task.get('name')!r}, this run's is "
                          f"{now['task']['name']!r}: resume a checkpoint of the same recipe")
    changes = {name: (old[part][key], new[part].get(key)) for name, (part, key) in names.items()
               if key in old[part] and old[part][key] != new[part].get(key)}
    refused = {k: v for k, v in changes.items() if k not in allowed}
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changes.items()))
    if refused:
        fixable = sorted(k for k in refused if k.removeprefix("engine.") != "optimizer")
        hints = [f"allow the change deliberately with --allow-change {','.join(fixable)}"] if fixable else []
        if len(fixable) < len(refused):
            hints.append("the optimizer cannot change (the checkpoint holds its state): start a new run instead")
        raise ConfigError(f"{file}: the run was started with other settings: {listed}; resume with the "
                          f"checkpoint's settings, or {'; '.join(hints)}")
    if changes:
        log(f"resuming with changed settings (allowed): {listed}")
