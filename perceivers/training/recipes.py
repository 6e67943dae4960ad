"""Recipes: a registered model, its training settings and the data it trains on.

``perceivers train NAME`` runs a recipe; its settings can be overridden from the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from perceivers.hub import write_json
from perceivers.registry import create_model
from perceivers.training.lm import LMTrainConfig, evaluate_bits_per_byte, train_lm
from perceivers.training.trainer import TrainConfig, evaluate, train_classifier


@dataclass(frozen=True, kw_only=True)
class DigitsRecipe:
    """Perceiver IO classifier on scikit-learn's 8x8 digits from raw pixels + 2-D Fourier features."""

    model: str = "perceiver-io-digits"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=80, batch_size=64, lr=1e-3,
                                                                   weight_decay=0.05, warmup_fraction=0.1))
    max_shift: int = 1  # augmentation: random translation by up to this many pixels

    def run(self, out_dir: str | Path, *, progress: bool = True, log=print) -> dict[str, Any]:
        """Train, evaluate on the fixed test split, save ``out_dir/model`` and ``out_dir/metrics.json``."""
        from perceivers.data.digits import SPLIT_SEED, TEST_SIZE, load_digits_split, random_shift

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = load_digits_split()
        torch.manual_seed(self.train.seed)
        model = create_model(self.model)
        log(f"model {self.model}: {model.num_parameters():,} parameters; "
            f"{len(data.train_images)} train / {len(data.test_images)} test digits")

        def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return random_shift(x, self.max_shift, g)

        stats = train_classifier(model, (data.train_images, data.train_labels), self.train,
                                 augment=augment if self.max_shift > 0 else None, progress=progress)
        test = evaluate(model, data.test_images, data.test_labels, device=self.train.device)
        model.to("cpu").save_pretrained(out / "model")
        metrics = {
            "recipe": "digits", "model": self.model, "num_parameters": model.num_parameters(),
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "num_test": test["num_examples"],
            "split": {"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratified": True},
            "max_shift": self.max_shift, "train": self.train.to_dict(), **stats,
        }
        write_json(out / "metrics.json", metrics)
        log(f"test accuracy: {test['accuracy']:.4f} ({round(test['accuracy'] * test['num_examples'])}/"
            f"{test['num_examples']}), trained in {stats['train_seconds']:.0f} s")
        log(f"saved model to {out / 'model'} and metrics to {out / 'metrics.json'}")
        return metrics


@dataclass(frozen=True, kw_only=True)
class TextRecipe:
    """Byte-level Perceiver AR on the Python standard library's sources (:mod:`perceivers.data.text`).

    ``context`` / ``num_latents`` / ``channels`` / ``num_layers`` / ``num_heads`` override the registered model
    (``None`` keeps it); validation bits per byte are measured on ``eval_windows`` fixed windows.
    """

    model: str = "perceiver-ar-stdlib-bytes"
    context: int | None = None
    num_latents: int | None = None
    channels: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    train: LMTrainConfig = field(default_factory=LMTrainConfig)
    eval_windows: int = 64
    data_root: str | None = None  # default: the running interpreter's stdlib
    include_tests: bool = False

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

    def run(self, out_dir: str | Path, *, progress: bool = True, log=print) -> dict[str, Any]:
        """Train, measure validation bits per byte, save ``out_dir/model`` and ``out_dir/metrics.json``."""
        from perceivers.data.text import VALIDATION_MODULUS, load_corpus, random_windows, validation_windows

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.train.seed)
        model = create_model(self.model, **self.model_overrides())
        c = model.config
        corpus = load_corpus(self.data_root, include_tests=self.include_tests)
        val = validation_windows(corpus.validation, num_windows=self.eval_windows, context=c.max_context_length)
        log(f"model {self.model}: {model.num_parameters():,} parameters, context {c.max_context_length}, "
            f"{c.num_latents} latents; corpus {corpus.root}: {len(corpus.train_files)} train files "
            f"({corpus.train.numel():,} tokens), {len(corpus.validation_files)} validation files "
            f"({corpus.validation.numel():,} tokens)")

        def sample(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return random_windows(corpus.train, batch_size=self.train.batch_size, context=c.max_context_length,
                                  min_length=c.num_latents, generator=g)

        stats = train_lm(model, sample, self.train, num_latents=c.num_latents, progress=progress)
        result = evaluate_bits_per_byte(model, val, num_latents=c.num_latents, device=self.train.device)
        model.to("cpu").save_pretrained(out / "model")
        metrics = {
            "recipe": "text", "model": self.model, "model_overrides": self.model_overrides(),
            "num_parameters": model.num_parameters(), "context": c.max_context_length, "num_latents": c.num_latents,
            "validation_bits_per_byte": result["bits_per_byte"],
            "num_validation_bytes": result["num_predicted_bytes"], "eval_windows": self.eval_windows,
            "split": {"rule": f"sha256(relative path)[:8] big-endian % {VALIDATION_MODULUS} == 0 -> validation",
                      "train_files": len(corpus.train_files), "validation_files": len(corpus.validation_files),
                      "train_tokens": corpus.train.numel(), "validation_tokens": corpus.validation.numel(),
                      "include_tests": self.include_tests},
            "train": dataclasses.asdict(self.train), **stats,
        }
        write_json(out / "metrics.json", metrics)
        log(f"validation bits per byte: {result['bits_per_byte']:.4f} over {result['num_predicted_bytes']:,} "
            f"bytes, trained in {stats['train_seconds']:.0f} s")
        log(f"saved model to {out / 'model'} and metrics to {out / 'metrics.json'}")
        return metrics


RECIPES: dict[str, type] = {"digits": DigitsRecipe, "text": TextRecipe}
