"""Engine tasks of the built-in recipes: digits classification and byte-level language modelling."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from perceivers.registry import create_model
from perceivers.training.engine import classification_loss


@dataclass
class DigitsTask:
    """Classify scikit-learn's 8x8 digits (fixed stratified split); random ±``max_shift``-pixel shifts."""

    model: str = "perceiver-io-digits"
    max_shift: int = 1
    label_smoothing: float = 0.0
    name: str = "digits"
    _data: Any = field(default=None, init=False, repr=False)

    def data(self):
        if self._data is None:
            from perceivers.data.digits import load_digits_split

            self._data = load_digits_split()
        return self._data

    def build_model(self) -> nn.Module:
        return create_model(self.model)

    def train_dataset(self) -> Dataset:
        d = self.data()
        return TensorDataset(d.train_images, d.train_labels)  # (1437, 1, 8, 8), (1437,)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        from perceivers.data.digits import random_shift

        images, labels = batch
        if self.max_shift > 0:  # draws from the global RNG (seeded and checkpointed by the engine)
            images = random_shift(images.cpu(), self.max_shift, None).to(images.device)  # type: ignore[arg-type]
        logits = model(images)  # (B, 10)
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return classification_loss(logits, labels, self.label_smoothing), {"accuracy": accuracy}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from perceivers.training.trainer import evaluate

        d = self.data()
        device = next(model.parameters()).device
        result = evaluate(model, d.test_images, d.test_labels, device=str(device))
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "num_test": result["num_examples"]}

    def describe(self) -> dict[str, Any]:
        from perceivers.data.digits import SPLIT_SEED, TEST_SIZE

        return {"recipe": "digits", "model": self.model, "max_shift": self.max_shift,
                "split": {"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratified": True}}

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """Nothing beyond the engine's model and metrics."""


class TextWindows(Dataset):
    """Every ``context + 1``-token window of a token stream, item ``i`` starting at token ``i``; a window is cut to
    start at its latest SOS that leaves at least ``min_length + 1`` tokens (then right-padded with PAD).
    Items: ``(window (context + 1,) long, valid length () long)``, as :func:`perceivers.data.text.random_windows`."""

    def __init__(self, stream: Tensor, *, context: int, min_length: int) -> None:
        from perceivers.data.text import _check_window

        _check_window(stream, context, "training")
        self.stream, self.width, self.min_length = stream, context + 1, min_length

    def __len__(self) -> int:
        return self.stream.numel() - self.width + 1

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from perceivers.data.text import SOS_ID

        window = self.stream[i:i + self.width].long()
        index = torch.arange(self.width)
        latest = (window == SOS_ID) & (index <= self.width - (self.min_length + 1))
        cut = int((latest * index).max()) if bool(latest.any()) else 0
        length = self.width - cut
        out = torch.zeros(self.width, dtype=torch.long)
        out[:length] = window[cut:]
        return out, torch.tensor(length)


@dataclass
class TextTask:
    """Byte-level Perceiver AR on the Python standard library (:mod:`perceivers.data.text`); validation bits per
    byte on ``eval_windows`` fixed windows."""

    model: str = "perceiver-ar-stdlib-bytes"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    eval_windows: int = 64
    data_root: str | None = None
    include_tests: bool = False
    name: str = "text"
    _corpus: Any = field(default=None, init=False, repr=False)
    _dims: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def corpus(self):
        if self._corpus is None:
            from perceivers.data.text import load_corpus

            self._corpus = load_corpus(self.data_root, include_tests=self.include_tests)
        return self._corpus

    def build_model(self) -> nn.Module:
        return create_model(self.model, **self.model_overrides)

    def _shape(self) -> tuple[int, int]:
        """(context M, latents N) of the configured model."""
        if self._dims is None:
            c = create_model(self.model, device="meta", **self.model_overrides).config
            self._dims = (c.max_context_length, c.num_latents)
        return self._dims

    def train_dataset(self) -> Dataset:
        context, latents = self._shape()
        return TextWindows(self.corpus().train, context=context, min_length=latents)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        from perceivers.training.lm import lm_loss

        windows, lengths = batch  # (B, W), (B,)
        return lm_loss(model, windows, lengths, self._shape()[1]), {}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from perceivers.data.text import validation_windows
        from perceivers.training.lm import evaluate_bits_per_byte

        context, latents = self._shape()
        val = validation_windows(self.corpus().validation, num_windows=self.eval_windows, context=context)
        device = str(next(model.parameters()).device)
        result = evaluate_bits_per_byte(model, val, num_latents=latents, device=device)
        return {"validation_bits_per_byte": result["bits_per_byte"],
                "num_validation_bytes": result["num_predicted_bytes"]}

    def describe(self) -> dict[str, Any]:
        from perceivers.data.text import VALIDATION_MODULUS

        c, (context, latents) = self.corpus(), self._shape()
        return {"recipe": "text", "model": self.model, "model_overrides": self.model_overrides, "context": context,
                "num_latents": latents, "eval_windows": self.eval_windows,
                "split": {"rule": f"sha256(relative path)[:8] big-endian % {VALIDATION_MODULUS} == 0 -> validation",
                          "train_files": len(c.train_files), "validation_files": len(c.validation_files),
                          "train_tokens": c.train.numel(), "validation_tokens": c.validation.numel(),
                          "include_tests": self.include_tests}}

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """Nothing beyond the engine's model and metrics."""
