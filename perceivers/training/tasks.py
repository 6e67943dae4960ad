"""Engine tasks of the built-in recipes: digits classification, byte-level language modelling, the copy task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from perceivers.models import create_model, get_config
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
            c = get_config(self.model, **self.model_overrides)
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


@dataclass
class CopyTask:
    """Perceiver AR on the official copy task (:mod:`perceivers.data.copy_task`, synthetic): training items are
    sequences ``0 .. train_sequences - 1`` of a stream seeded by ``seed``; evaluation scores ``eval_sequences``
    sequences of a separate stream, teacher-forced: the accuracy of the predictions of the mirrored half, and of
    its farthest quarter (the copies whose source is closest to the start)."""

    model: str = "perceiver-ar-copy"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    length: int = 64
    train_sequences: int = 1 << 20
    eval_sequences: int = 256
    seed: int = 0
    name: str = "copy"
    _latents: int | None = field(default=None, init=False, repr=False)

    EVAL_SEED: ClassVar[int] = 12345  # the evaluation stream (odd: training items use even generator seeds)

    def build_model(self) -> nn.Module:
        return create_model(self.model, **self.model_overrides)

    def _num_latents(self) -> int:
        if self._latents is None:
            c = get_config(self.model, **self.model_overrides)
            if c.max_context_length != self.length - 1:
                raise ValueError(f"model context {c.max_context_length} does not fit length={self.length}: "
                                 f"the copy task needs max_context_length = length - 1 = {self.length - 1}")
            if c.num_latents < 2:
                raise ValueError(f"num_latents={c.num_latents} is invalid for the copy task: expected >= 2 (the last "
                                 "latent predicts EOS; the ones before it score the copies)")
            self._latents = c.num_latents
        return self._latents

    def train_dataset(self) -> Dataset:
        from perceivers.data.copy_task import MirroredSequences

        self._num_latents()  # fail early on a context that does not fit
        return MirroredSequences(size=self.train_sequences, length=self.length, seed=self.seed)

    def training_loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        from perceivers.training.lm import lm_loss

        lengths = torch.full((batch.shape[0],), self.length, device=batch.device)
        return lm_loss(model, batch, lengths, self._num_latents()), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from perceivers.data.copy_task import copy_positions, mirrored_sequences
        from perceivers.training.lm import latent_targets

        n, device = self._num_latents(), next(model.parameters()).device
        sequences = mirrored_sequences(self.eval_sequences, self.length, torch.Generator().manual_seed(self.EVAL_SEED))
        lengths = torch.full((self.eval_sequences,), self.length)
        inputs, input_lengths, targets = latent_targets(sequences, lengths, n)
        was_training = model.training
        model.eval()
        correct = torch.cat([model(inputs[i:i + 64].to(device), input_lengths[i:i + 64].to(device),
                                   num_latents=n).argmax(-1).cpu() == targets[i:i + 64]
                             for i in range(0, self.eval_sequences, 64)])  # (E, N)
        model.train(was_training)
        copy, far = copy_positions(self.length, n)
        k = (self.length - 2) // 2
        result = {"copy_accuracy": float(correct[:, copy].float().mean()),
                  "num_scored_copies": int(copy.sum()) * self.eval_sequences, "max_distance": 2 * k - 1,
                  "chance": 1 / 256}
        if far.any():  # sequences of 8 or fewer tokens have no farthest quarter
            result["far_quarter_accuracy"] = float(correct[:, far].float().mean())
        return result

    def describe(self) -> dict[str, Any]:
        return {"recipe": "copy", "model": self.model, "model_overrides": self.model_overrides, "length": self.length,
                "num_latents": self._num_latents(), "data": "synthetic: official RandomMirroredDataset sequences",
                "train_sequences": self.train_sequences, "eval_sequences": self.eval_sequences,
                "eval_seed": self.EVAL_SEED}

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """Nothing beyond the engine's model and metrics."""
