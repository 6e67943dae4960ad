"""Recipes: a registered model, the task it trains on and its engine settings (:class:`EngineConfig`).

``perceivers train NAME [--key value ...]`` runs a recipe on the training engine; every field of the recipe and
of its ``engine`` can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from perceivers.training.engine import EngineConfig
from perceivers.training.hip_mae import HiPFinetuneRecipe, HiPMAERecipe
from perceivers.training.tasks import DigitsTask, TextTask


@dataclass(frozen=True, kw_only=True)
class DigitsRecipe:
    """Perceiver IO classifier on scikit-learn's 8x8 digits from raw pixels + 2-D Fourier features."""

    model: str = "perceiver-io-digits"
    max_shift: int = 1  # augmentation: random translation by up to this many pixels
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        epochs=80, batch_size=64, lr=1e-3, weight_decay=0.05, warmup_fraction=0.1, grad_clip=1.0,
        checkpoint_every=460, log_every=23, eval_every=230))

    def __post_init__(self) -> None:
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift={self.max_shift!r} is invalid: expected an int >= 0")

    def task(self) -> DigitsTask:
        return DigitsTask(model=self.model, max_shift=self.max_shift, label_smoothing=self.engine.label_smoothing)

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        n, acc = result["num_test"], result["test_accuracy"]
        return f"test accuracy: {acc:.4f} ({round(acc * n)}/{n}), trained in {result['train_seconds']:.0f} s"


@dataclass(frozen=True, kw_only=True)
class TextRecipe:
    """Byte-level Perceiver AR on the Python standard library's sources (:mod:`perceivers.data.text`).

    ``context`` / ``num_latents`` / ``channels`` / ``num_layers`` / ``num_heads`` override the registered model
    (``None`` keeps it); validation bits per byte are measured on ``eval_windows`` fixed windows.
    """

    aliases: ClassVar[dict[str, str]] = {"latents": "num_latents", "layers": "num_layers", "heads": "num_heads"}

    model: str = "perceiver-ar-stdlib-bytes"
    context: int | None = None
    num_latents: int | None = None
    channels: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    eval_windows: int = 64
    data_root: str | None = None  # default: the running interpreter's stdlib
    include_tests: bool = False
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        steps=300, epochs=None, batch_size=16, lr=2e-3, weight_decay=0.01, warmup_fraction=0.05, grad_clip=1.0,
        checkpoint_every=100, log_every=10, eval_every=100))

    def __post_init__(self) -> None:
        for name in ("context", "num_latents", "channels", "num_layers", "num_heads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1 or None")
        if isinstance(self.eval_windows, bool) or not isinstance(self.eval_windows, int) or self.eval_windows < 1:
            raise ValueError(f"eval_windows={self.eval_windows!r} is invalid: expected an int >= 1")

    def model_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        if self.context is not None:
            overrides["max_context_length"] = self.context
        if self.num_latents is not None:
            overrides["num_latents"] = self.num_latents
        if self.channels is not None:
            overrides["num_channels"] = overrides["num_latent_channels"] = self.channels
        if self.num_layers is not None:
            overrides["num_self_attend_layers"] = self.num_layers
        if self.num_heads is not None:
            overrides["num_cross_attend_heads"] = overrides["num_self_attend_heads"] = self.num_heads
        return overrides

    def task(self) -> TextTask:
        return TextTask(model=self.model, model_overrides=self.model_overrides(), eval_windows=self.eval_windows,
                        data_root=self.data_root, include_tests=self.include_tests)

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        return (f"validation bits per byte: {result['validation_bits_per_byte']:.4f} over "
                f"{result['num_validation_bytes']:,} bytes, trained in {result['train_seconds']:.0f} s")


RECIPES: dict[str, type] = {"digits": DigitsRecipe, "text": TextRecipe, "hip-mae": HiPMAERecipe,
                             "hip-mae-finetune": HiPFinetuneRecipe}
