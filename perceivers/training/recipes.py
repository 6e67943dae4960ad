"""Recipes: a registered model, the task it trains on and its engine settings (:class:`EngineConfig`).

``perceivers train NAME [--key value ...]`` runs a recipe on the training engine; every field of the recipe and
of its ``engine`` can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from perceivers.training.engine import EngineConfig
from perceivers.training.hip_mae import HiPFinetuneRecipe, HiPMAERecipe
from perceivers.training.tasks import CopyTask, DigitsTask, TextTask


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


def _check_sizes(recipe: Any, names: tuple[str, ...], *, optional: bool = True) -> None:
    """``ValueError`` naming the field unless each is an int >= 1 (or ``None`` when ``optional``)."""
    for name in names:
        value = getattr(recipe, name)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1{' or None' if optional else ''}")


def ar_overrides(recipe: Any, *, context: int | None) -> dict[str, Any]:
    """Perceiver AR config overrides from a recipe's ``num_latents`` / ``channels`` / ``num_layers`` /
    ``num_heads`` (``None`` keeps the registered value) and the context ``M``."""
    overrides: dict[str, Any] = {}
    if context is not None:
        overrides["max_context_length"] = context
    if recipe.num_latents is not None:
        overrides["num_latents"] = recipe.num_latents
    if recipe.channels is not None:
        overrides["num_channels"] = overrides["num_latent_channels"] = recipe.channels
    if recipe.num_layers is not None:
        overrides["num_self_attend_layers"] = recipe.num_layers
    if recipe.num_heads is not None:
        overrides["num_cross_attend_heads"] = overrides["num_self_attend_heads"] = recipe.num_heads
    return overrides


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
        _check_sizes(self, ("context", "num_latents", "channels", "num_layers", "num_heads"))
        _check_sizes(self, ("eval_windows",), optional=False)

    def model_overrides(self) -> dict[str, Any]:
        return ar_overrides(self, context=self.context)

    def task(self) -> TextTask:
        return TextTask(model=self.model, model_overrides=self.model_overrides(), eval_windows=self.eval_windows,
                        data_root=self.data_root, include_tests=self.include_tests)

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        return (f"validation bits per byte: {result['validation_bits_per_byte']:.4f} over "
                f"{result['num_validation_bytes']:,} bytes, trained in {result['train_seconds']:.0f} s")


@dataclass(frozen=True, kw_only=True)
class CopyRecipe:
    """Perceiver AR on the official synthetic copy task (:mod:`perceivers.data.copy_task`): sequences of
    ``length`` tokens whose second half mirrors the first, so the last copies reach back to the start.

    The context is ``length - 1``; ``num_latents`` / ``channels`` / ``num_layers`` / ``num_heads`` override the
    registered model (``None`` keeps it). Training draws fresh sequences (item ``i`` of a seeded stream of
    ``train_sequences``); evaluation scores ``eval_sequences`` other ones, teacher-forced.
    """

    aliases: ClassVar[dict[str, str]] = {"latents": "num_latents", "layers": "num_layers", "heads": "num_heads"}

    model: str = "perceiver-ar-copy"
    length: int = 64
    num_latents: int | None = None
    channels: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    train_sequences: int = 1 << 20
    eval_sequences: int = 256
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        steps=1000, epochs=None, batch_size=32, lr=2e-3, weight_decay=0.01, warmup_fraction=0.1, grad_clip=1.0,
        checkpoint_every=500, log_every=20, eval_every=250))

    def __post_init__(self) -> None:
        from perceivers.data.copy_task import check_length

        check_length(self.length)
        _check_sizes(self, ("num_latents", "channels", "num_layers", "num_heads"))
        _check_sizes(self, ("train_sequences", "eval_sequences"), optional=False)
        if self.num_latents is not None and self.num_latents > self.length - 1:
            raise ValueError(f"num_latents={self.num_latents} is invalid: expected at most the context "
                             f"length - 1 = {self.length - 1}")

    def task(self) -> CopyTask:
        return CopyTask(model=self.model, model_overrides=ar_overrides(self, context=self.length - 1),
                        length=self.length, train_sequences=self.train_sequences,
                        eval_sequences=self.eval_sequences, seed=self.engine.seed)

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        far = result.get("far_quarter_accuracy")
        return (f"copy accuracy on the mirrored half: {result['copy_accuracy']:.4f}"
                + (f" (farthest quarter {far:.4f})" if far is not None else "")
                + f", copies from up to {result['max_distance']} positions back, chance {result['chance']:.4f}; "
                f"trained in {result['train_seconds']:.0f} s")


RECIPES: dict[str, type] = {"digits": DigitsRecipe, "text": TextRecipe, "copy": CopyRecipe, "hip-mae": HiPMAERecipe,
                             "hip-mae-finetune": HiPFinetuneRecipe}
