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

from perceivers.core.errors import ConfigError
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


def model_kind(config: Any) -> str:
    """What a model of ``config`` is, in words (``perceivers eval`` names it when a checkpoint does not fit)."""
    kind = type(config).__name__
    if kind == "PerceiverARConfig":
        return (f"Perceiver AR ({config.vocab_size} token ids, context {config.max_context_length}, "
                f"{config.num_latents} latents)")
    if kind == "HiPClassifierConfig":
        return f"HiP classifier ({config.num_classes} classes)"
    if kind == "HiPConfig":
        return "HiP" + (" with mask tokens" if config.use_mask_token else "") + f" (modalities {dict(config.modalities)})"
    if kind != "PerceiverIOConfig":
        return kind.removesuffix("Config") or "model"
    prep, decoder = type(config.preprocessor).__name__, config.decoder
    if prep == "TextPreprocessorConfig":
        return "Perceiver IO masked language model" if decoder.type == "basic" else "Perceiver IO text classifier"
    if prep == "FlowPreprocessorConfig":
        return "Perceiver IO optical-flow model"
    if prep == "MultimodalPreprocessorConfig":
        return "Perceiver IO multimodal autoencoder"
    if prep == "ImagePreprocessorConfig" and decoder.type == "classification":
        p = config.preprocessor
        return (f"Perceiver IO image classifier ({p.in_channels}x{'x'.join(map(str, p.image_size))} images, "
                f"{decoder.num_outputs} classes)")
    return f"Perceiver IO model ({decoder.type} decoder)"


class Task(ABC):
    """One per recipe: data and loss. Subclasses implement the four abstract methods; the other methods are hooks
    with defaults that do nothing (or the generic thing) and may be overridden."""

    name: ClassVar[str] = "task"
    #: What :meth:`for_model` accepts, in words (``perceivers eval`` names it for a checkpoint that does not fit).
    model_kind: ClassVar[str] = "model of this task"
    #: The meaning of each setting (``perceivers train RECIPE --help`` lists it with the default).
    setting_help: ClassVar[dict[str, str]] = {}
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

    def fits(self, config: Any) -> bool:
        """Whether a model of ``config`` is one this task trains and can evaluate; default: a config of the class of
        the registered ``model`` setting's (any model for a task without one)."""
        name = self.settings().get("model")
        return not (isinstance(name, str) and name in list_models()) or type(config) is type(get_config(name))

    def for_model(self, model: nn.Module) -> Task:
        """The task that evaluates a loaded ``model`` (``perceivers eval RECIPE``, which then calls :meth:`evaluate`).

        :class:`~perceivers.core.errors.ConfigError` ``this checkpoint is a <kind>; eval <task> needs a
        <model_kind>`` unless the model :meth:`fits`; subclasses return a copy with the settings the model implies
        (its context, its latents); default: this task."""
        config = getattr(model, "config", None)
        if not self.fits(config):
            needs = self.model_kind
            if needs == Task.model_kind and isinstance(self.settings().get("model"), str):
                needs = f"model like the registered {self.settings()['model']!r}"
            raise ConfigError(f"this checkpoint is a {model_kind(config)}; eval {self.name} needs a {needs}")
        return self

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
