"""Tasks of the built-in recipes: digits classification, byte-level language modelling, the copy task.

Each is a frozen dataclass of its settings (validated on construction, overridable from the command line by field
name) and a :class:`~perceivers.training.task.Task`: it builds its model by registered name, owns its data and its
loss (label smoothing included), and reports its held-out metrics.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from perceivers.core.validation import (
    check_bool,
    check_int,
    check_optional_int,
    check_prob,
    fail,
)
from perceivers.data.copy_task import (
    MirroredSequences,
    check_length,
    copy_positions,
    mirrored_sequences,
)
from perceivers.data.digits import (
    SPLIT_SEED,
    TEST_SIZE,
    load_digits_split,
    random_shift,
)
from perceivers.data.text import (
    VALIDATION_MODULUS,
    TextCorpus,
    TextWindows,
    load_corpus,
    validation_windows,
)
from perceivers.models import create_model
from perceivers.models.perceiver_ar import PerceiverARConfig
from perceivers.models.perceiver_io import PerceiverIOConfig
from perceivers.preprocessors import ImagePreprocessorConfig
from perceivers.tokenizers import AR_VOCAB_SIZE
from perceivers.training.losses import (
    classification_loss,
    evaluate_bits_per_byte,
    evaluate_classifier,
    latent_targets,
    lm_loss,
)
from perceivers.training.task import Task, model_config

AR_ALIASES = {"latents": "num_latents", "layers": "num_layers", "heads": "num_heads"}
AR_SIZES = ("num_latents", "channels", "num_layers", "num_heads")
AR_SETTING_HELP = {
    "model": "registered Perceiver AR to train (see `perceivers models perceiver-ar`)",
    "num_latents": "latents N, the positions that predict (None: the model's)",
    "channels": "width of inputs and latents (None: the model's)",
    "num_layers": "self-attention layers over the latents (None: the model's)",
    "num_heads": "attention heads (None: the model's)",
}
#: What the digits task trains and ``perceivers eval digits`` scores.
DIGITS_MODEL = "Perceiver IO classifier of 1x8x8 images into 10 classes"


def is_digits_classifier(config: Any) -> bool:
    """Whether ``config`` is a :data:`DIGITS_MODEL`: the shape of the digits' images and labels."""
    p = getattr(config, "preprocessor", None)
    return (isinstance(config, PerceiverIOConfig) and isinstance(p, ImagePreprocessorConfig)
            and tuple(p.image_size) == (8, 8) and p.in_channels == 1
            and config.decoder.type == "classification" and config.decoder.num_outputs == 10)


def is_perceiver_ar(config: Any) -> bool:
    """Whether ``config`` is a Perceiver AR (what the text and copy tasks train)."""
    return isinstance(config, PerceiverARConfig)


def is_byte_perceiver_ar(config: Any) -> bool:
    """Whether ``config`` is a Perceiver AR over the byte ids of :mod:`perceivers.data.text` (what ``perceivers eval
    text`` and ``eval copy`` score)."""
    return is_perceiver_ar(config) and config.vocab_size == AR_VOCAB_SIZE


def accuracy_summary(result: dict[str, Any]) -> str:
    """The log line of a finished classification run: test accuracy (correct / total) and training time."""
    n, acc = result["num_test"], result["test_accuracy"]
    return f"test accuracy: {acc:.4f} ({round(acc * n)}/{n}), trained in {result['train_seconds']:.0f} s"


@dataclass(frozen=True, kw_only=True)
class ImageClassificationTask(Task):
    """A Perceiver IO classifier of images from a fixed split (:meth:`load_split`: ``train_images`` (N, C, H, W),
    ``train_labels`` (N,), ``test_images``, ``test_labels``), with random ±``max_shift``-pixel shifts and a
    cross-entropy with ``label_smoothing``; evaluation: test accuracy and loss. Subclasses say which split and
    which models fit (:meth:`fits`)."""

    model: str
    max_shift: int
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_int("max_shift", self.max_shift, minimum=0)
        check_prob("label_smoothing", self.label_smoothing)

    @abstractmethod
    def load_split(self) -> Any:
        """The fixed train / test split (see the class docstring)."""

    def build_model(self) -> nn.Module:
        model_config("model", self.model, self.fits, self.model_kind)
        return create_model(self.model)

    def train_dataset(self, seed: int) -> Dataset:
        d = self.load_split()
        return TensorDataset(d.train_images, d.train_labels)  # (N, C, H, W), (N,)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        images, labels = batch
        if self.max_shift > 0:  # draws from the global RNG (seeded and checkpointed by the engine)
            images = random_shift(images.cpu(), self.max_shift, None).to(images.device)  # type: ignore[arg-type]
        logits = model(images)  # (B, classes)
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return classification_loss(logits, labels, self.label_smoothing), {"accuracy": accuracy}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        d = self.load_split()
        result = evaluate_classifier(model, d.test_images, d.test_labels, device=next(model.parameters()).device)
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "num_test": result["num_examples"]}

    def summary(self, result: dict[str, Any]) -> str:
        return accuracy_summary(result)


@dataclass(frozen=True, kw_only=True)
class DigitsTask(ImageClassificationTask):
    """Classify scikit-learn's 8x8 digits (fixed stratified split) with a Perceiver IO classifier from raw pixels +
    2-D Fourier features; random ±``max_shift``-pixel shifts; cross-entropy with ``label_smoothing``."""

    name: ClassVar[str] = "digits"
    model_kind: ClassVar[str] = DIGITS_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered Perceiver IO classifier of the 8x8 digits (see `perceivers models digits`)",
        "max_shift": "augmentation: random shifts of up to this many pixels (0: none)",
        "label_smoothing": "label smoothing of the cross-entropy, in [0, 1)"}

    model: str = "perceiver-io-digits"
    max_shift: int = 1  # augmentation: random translation by up to this many pixels

    def fits(self, config: Any) -> bool:
        return is_digits_classifier(config)

    def load_split(self) -> Any:
        return load_digits_split()  # (1437, 1, 8, 8) train, (360, 1, 8, 8) test

    def describe(self) -> dict[str, Any]:
        return {"recipe": "digits", "model": self.model, "max_shift": self.max_shift,
                "label_smoothing": self.label_smoothing,
                "split": {"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratified": True}}


def perceiver_ar_overrides(task: Any, *, context: int | None) -> dict[str, Any]:
    """Perceiver AR config overrides from a task's ``num_latents`` / ``channels`` / ``num_layers`` / ``num_heads``
    (``None`` keeps the registered value) and the context ``M``."""
    overrides: dict[str, Any] = {}
    if context is not None:
        overrides["max_context_length"] = context
    if task.num_latents is not None:
        overrides["num_latents"] = task.num_latents
    if task.channels is not None:
        overrides["num_channels"] = overrides["num_latent_channels"] = task.channels
    if task.num_layers is not None:
        overrides["num_self_attend_layers"] = task.num_layers
    if task.num_heads is not None:
        overrides["num_cross_attend_heads"] = overrides["num_self_attend_heads"] = task.num_heads
    return overrides


@dataclass(frozen=True, kw_only=True)
class ARStreamTask(Task):
    """What the tasks that train Perceiver AR on windows of one token stream share (``text``, ``music``): the size
    overrides, the checked (context M, latents N) of the configured model, the training windows, the
    language-modelling loss and the validation windows. A subclass sets ``model``, :attr:`accepts` and
    :attr:`expected_model`, and implements :meth:`corpus` (an object with ``train`` and ``validation`` streams)."""

    #: Which registered configs the ``model`` setting may name, and that family in words (its error message).
    accepts: ClassVar[Callable[[Any], bool]]
    expected_model: ClassVar[str] = "Perceiver AR model"

    model: str
    context: int | None = None
    num_latents: int | None = None
    channels: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    max_wavelength: int | None = None
    eval_windows: int = 64
    eval_context: int | None = None

    def __post_init__(self) -> None:
        for name in ("context", *AR_SIZES, "max_wavelength", "eval_context"):
            check_optional_int(name, getattr(self, name))
        check_int("eval_windows", self.eval_windows)
        if self.context is not None and self.eval_context is not None and self.eval_context < self.context:
            fail("eval_context", self.eval_context, f">= context={self.context}")

    @abstractmethod
    def corpus(self) -> Any:
        """The token streams: ``.train`` and ``.validation``, 1-D int64 tensors."""

    def for_model(self, model: nn.Module) -> Self:
        """This task with the loaded model's context and latents (scored as the training run scored it)."""
        super().for_model(model)  # ConfigError unless the model fits
        c = model.config
        return dataclasses.replace(self, context=c.max_context_length, num_latents=c.num_latents)

    def model_overrides(self) -> dict[str, Any]:
        overrides = perceiver_ar_overrides(self, context=self.context)
        if self.max_wavelength is not None:
            overrides["max_wavelength"] = self.max_wavelength
        return overrides

    @cached_property
    def _dims(self) -> tuple[int, int]:
        """(context M, latents N) of the configured model (validated by its config)."""
        c = model_config("model", self.model, type(self).accepts, self.expected_model, **self.model_overrides())
        if self.eval_context is not None and self.eval_context < c.max_context_length:
            fail("eval_context", self.eval_context, f">= the model's context {c.max_context_length}")
        return c.max_context_length, c.num_latents

    def build_model(self) -> nn.Module:
        _ = self._dims  # fail early on a model of another family or a too short eval_context
        return create_model(self.model, **self.model_overrides())

    def train_dataset(self, seed: int) -> Dataset:
        context, latents = self._dims
        return TextWindows(self.corpus().train, context=context, min_length=latents)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        windows, lengths = batch  # (B, W), (B,)
        return lm_loss(model, windows, lengths, self._dims[1]), {}

    def score_validation(self, model: nn.Module) -> dict[str, float]:
        """``bits_per_byte`` (bits per scored target) and ``num_predicted_bytes`` on the fixed validation windows."""
        context, latents = self._dims
        val = validation_windows(self.corpus().validation, num_windows=self.eval_windows,
                                 context=self.eval_context or context)
        return evaluate_bits_per_byte(model, val, num_latents=latents, context=context,
                                      device=next(model.parameters()).device)


@lru_cache(maxsize=2)
def _corpus(root: str | None, include_tests: bool) -> TextCorpus:
    """The corpus, read once per process for every task that trains on it (e.g. the two models of a benchmark)."""
    return load_corpus(root, include_tests=include_tests)


@dataclass(frozen=True, kw_only=True)
class TextTask(ARStreamTask):
    """Byte-level Perceiver AR on the Python standard library's sources (:mod:`perceivers.data.text`).

    ``context`` / ``num_latents`` / ``channels`` / ``num_layers`` / ``num_heads`` / ``max_wavelength`` (rotary
    range) override the registered model (``None`` keeps it). Validation bits per byte are measured on
    ``eval_windows`` fixed windows of ``eval_context + 1`` tokens (default: the model's context), the model seeing
    the last ``context`` inputs of each: models of different contexts score the same targets with one
    ``eval_context``.
    """

    name: ClassVar[str] = "text"
    aliases: ClassVar[dict[str, str]] = AR_ALIASES
    model_kind: ClassVar[str] = f"byte-level Perceiver AR ({AR_VOCAB_SIZE} token ids)"
    setting_help: ClassVar[dict[str, str]] = {
        **AR_SETTING_HELP, "context": "context length M in bytes (None: the model's)",
        "max_wavelength": "rotary position range (None: the model's)",
        "eval_windows": "number of fixed validation windows scored",
        "eval_context": "validation window length (None: the model's context); >= context",
        "data_root": "folder of *.py files to train on (None: this Python's standard library)",
        "include_tests": "also read the standard library's test suites"}

    accepts: ClassVar[Callable[[Any], bool]] = staticmethod(is_perceiver_ar)

    model: str = "perceiver-ar-stdlib-bytes"
    data_root: str | None = None  # default: the running interpreter's stdlib
    include_tests: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("include_tests", self.include_tests)

    def fits(self, config: Any) -> bool:
        return is_byte_perceiver_ar(config)

    def corpus(self) -> TextCorpus:
        return _corpus(self.data_root, self.include_tests)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        result = self.score_validation(model)
        return {"validation_bits_per_byte": result["bits_per_byte"],
                "num_validation_bytes": result["num_predicted_bytes"]}

    def describe(self) -> dict[str, Any]:
        c, (context, latents) = self.corpus(), self._dims
        return {"recipe": "text", "model": self.model, "model_overrides": self.model_overrides(), "context": context,
                "num_latents": latents, "eval_windows": self.eval_windows,
                "eval_context": self.eval_context or context,
                "split": {"rule": f"sha256(relative path)[:8] big-endian % {VALIDATION_MODULUS} == 0 -> validation",
                          "train_files": len(c.train_files), "validation_files": len(c.validation_files),
                          "train_tokens": c.train.numel(), "validation_tokens": c.validation.numel(),
                          "include_tests": self.include_tests}}

    def summary(self, result: dict[str, Any]) -> str:
        return (f"validation bits per byte: {result['validation_bits_per_byte']:.4f} over "
                f"{result['num_validation_bytes']:,} bytes, trained in {result['train_seconds']:.0f} s")


@dataclass(frozen=True, kw_only=True)
class CopyTask(Task):
    """Perceiver AR on the official synthetic copy task (:mod:`perceivers.data.copy_task`): sequences of
    ``length`` tokens whose second half mirrors the first, so the last copies reach back to the start.

    The context is ``length - 1``; ``num_latents`` / ``channels`` / ``num_layers`` / ``num_heads`` override the
    registered model (``None`` keeps it). Training items are sequences ``0 .. train_sequences - 1`` of a stream
    seeded by the engine's seed; evaluation scores ``eval_sequences`` sequences of a separate stream,
    teacher-forced: the accuracy of the predictions of the mirrored half, and of its farthest quarter (the copies
    whose source is closest to the start).
    """

    name: ClassVar[str] = "copy"
    aliases: ClassVar[dict[str, str]] = AR_ALIASES
    model_kind: ClassVar[str] = (f"Perceiver AR of {AR_VOCAB_SIZE} token ids with an odd context >= 3 (a copy "
                                 "length - 1) and 2 or more latents")
    setting_help: ClassVar[dict[str, str]] = {
        **AR_SETTING_HELP, "length": "sequence length S, even: SOS, S/2 - 1 random bytes, their mirror, EOS",
        "train_sequences": "training sequences per epoch (generated from the engine's seed)",
        "eval_sequences": "held-out sequences scored (a separate fixed stream)"}
    EVAL_SEED: ClassVar[int] = 12345  # the evaluation stream (odd: training items use even generator seeds)

    model: str = "perceiver-ar-copy"
    length: int = 64
    num_latents: int | None = None
    channels: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    train_sequences: int = 1 << 20
    eval_sequences: int = 256

    def __post_init__(self) -> None:
        check_length(self.length)
        for name in AR_SIZES:
            check_optional_int(name, getattr(self, name))
        for name in ("train_sequences", "eval_sequences"):
            check_int(name, getattr(self, name))
        if self.num_latents is not None and self.num_latents > self.length - 1:
            fail("num_latents", self.num_latents, f"at most the context length - 1 = {self.length - 1}")

    def fits(self, config: Any) -> bool:
        return (is_byte_perceiver_ar(config) and config.max_context_length >= 3 and config.max_context_length % 2 == 1
                and 2 <= config.num_latents <= config.max_context_length)

    def for_model(self, model: nn.Module) -> CopyTask:
        """This task at the loaded model's length (its context + 1) and latents."""
        super().for_model(model)  # ConfigError unless the model fits
        c = model.config
        return dataclasses.replace(self, length=c.max_context_length + 1, num_latents=c.num_latents)

    def model_overrides(self) -> dict[str, Any]:
        return perceiver_ar_overrides(self, context=self.length - 1)

    @cached_property
    def _num_latents(self) -> int:
        """N of the configured model (its context is ``length - 1``); at least 2."""
        c = model_config("model", self.model, is_perceiver_ar, "Perceiver AR model", **self.model_overrides())
        if c.num_latents < 2:
            fail("num_latents", c.num_latents, ">= 2 for the copy task (the last latent predicts EOS; the ones "
                                               "before it score the copies)")
        return c.num_latents

    def build_model(self) -> nn.Module:
        _ = self._num_latents  # fail early on a model the copy task cannot train
        return create_model(self.model, **self.model_overrides())

    def train_dataset(self, seed: int) -> Dataset:
        _ = self._num_latents  # fail early on a model the copy task cannot score
        return MirroredSequences(size=self.train_sequences, length=self.length, seed=seed)

    def training_loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        lengths = torch.full((batch.shape[0],), self.length, device=batch.device)
        return lm_loss(model, batch, lengths, self._num_latents), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        n, device = self._num_latents, next(model.parameters()).device
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
        return {"recipe": "copy", "model": self.model, "model_overrides": self.model_overrides(),
                "length": self.length, "num_latents": self._num_latents,
                "data": "synthetic: official RandomMirroredDataset sequences", "train_sequences": self.train_sequences,
                "eval_sequences": self.eval_sequences, "eval_seed": self.EVAL_SEED}

    def summary(self, result: dict[str, Any]) -> str:
        far = result.get("far_quarter_accuracy")
        return (f"copy accuracy on the mirrored half: {result['copy_accuracy']:.4f}"
                + (f" (farthest quarter {far:.4f})" if far is not None else "")
                + f", copies from up to {result['max_distance']} positions back, chance {result['chance']:.4f}; "
                f"trained in {result['train_seconds']:.0f} s")
