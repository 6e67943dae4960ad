"""Task of the ``music`` recipe: Perceiver AR on the Bach chorales of music21's corpus (:mod:`perceivers.data.music`:
a 16th-note grid, the four voices interleaved per step, one token per voice and step).

The loss is the ``text`` recipe's (the mean next-token cross-entropy of the latent predictions); training windows
are the ``text`` recipe's windows of the training stream (cut to start at a piece's SOS where one fits), each
transposed by a random number of semitones in ``[-max_transpose, max_transpose]``. Validation scores the last
``N`` events of ``eval_windows`` fixed windows of the held-out pieces: nats (and bits) per event.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from perceivers.core.validation import check_int, check_optional_int, fail
from perceivers.data.music import (
    ENCODING_VERSION,
    VALIDATION_MODULUS,
    VOCAB_SIZE,
    MusicCorpus,
    load_music_corpus,
    transpose,
)
from perceivers.data.text import TextWindows, validation_windows
from perceivers.models import create_model
from perceivers.training.losses import evaluate_bits_per_byte, lm_loss
from perceivers.training.task import Task, model_config
from perceivers.training.tasks import (
    AR_ALIASES,
    AR_SETTING_HELP,
    AR_SIZES,
    is_perceiver_ar,
    perceiver_ar_overrides,
)

#: What the music task trains and ``perceivers eval music`` scores.
MUSIC_MODEL = f"Perceiver AR over the chorale events ({VOCAB_SIZE} token ids)"


def is_music_perceiver_ar(config: Any) -> bool:
    """Whether ``config`` is a :data:`MUSIC_MODEL` (what ``perceivers eval music`` and ``generate --midi`` read)."""
    return is_perceiver_ar(config) and config.vocab_size == VOCAB_SIZE


@lru_cache(maxsize=2)
def music_corpus(cache_dir: str | None) -> MusicCorpus:
    """The chorales, read once per process for every task that trains on them (e.g. the models of a benchmark)."""
    return load_music_corpus(cache_dir)


@dataclass(frozen=True, kw_only=True)
class MusicTask(Task):
    """Perceiver AR on the Bach chorales' events (see the module doc).

    ``context`` / ``num_latents`` / ``channels`` / ``num_layers`` / ``num_heads`` / ``max_wavelength`` override the
    registered model (``None`` keeps it). Validation windows hold ``eval_context + 1`` events (default: the
    model's context + 1), the model seeing the last ``context`` inputs of each, so models of different contexts
    score the same targets with one ``eval_context``.
    """

    name: ClassVar[str] = "music"
    aliases: ClassVar[dict[str, str]] = AR_ALIASES
    model_kind: ClassVar[str] = MUSIC_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        **AR_SETTING_HELP, "model": "registered Perceiver AR of the chorale events (perceiver-ar-music)",
        "context": "context length M in events (4 per 16th note; None: the model's)",
        "max_wavelength": "rotary position range (None: the model's)",
        "max_transpose": "augmentation: transpose each training window by up to this many semitones (0: none)",
        "eval_windows": "number of fixed validation windows scored",
        "eval_context": "validation window length (None: the model's context); >= context",
        "cache_dir": "folder of the encoded-chorale cache (None: $PERCEIVERS_CACHE or ~/.cache/perceivers)"}

    model: str = "perceiver-ar-music"
    context: int | None = None
    num_latents: int | None = None
    channels: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    max_wavelength: int | None = None
    max_transpose: int = 5
    eval_windows: int = 128
    eval_context: int | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("context", *AR_SIZES, "max_wavelength", "eval_context"):
            check_optional_int(name, getattr(self, name))
        check_int("eval_windows", self.eval_windows)
        check_int("max_transpose", self.max_transpose, minimum=0)
        if self.max_transpose > 24:
            fail("max_transpose", self.max_transpose, "at most 24 semitones")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            fail("cache_dir", self.cache_dir, "a folder path (str) or None")
        if self.context is not None and self.eval_context is not None and self.eval_context < self.context:
            fail("eval_context", self.eval_context, f">= context={self.context}")

    def fits(self, config: Any) -> bool:
        return is_music_perceiver_ar(config)

    def for_model(self, model: nn.Module) -> MusicTask:
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
        c = model_config("model", self.model, is_music_perceiver_ar, MUSIC_MODEL, **self.model_overrides())
        if self.eval_context is not None and self.eval_context < c.max_context_length:
            fail("eval_context", self.eval_context, f">= the model's context {c.max_context_length}")
        return c.max_context_length, c.num_latents

    def corpus(self) -> MusicCorpus:
        return music_corpus(self.cache_dir)

    def build_model(self) -> nn.Module:
        _ = self._dims  # fail early on a model of another family or vocabulary
        return create_model(self.model, **self.model_overrides())

    def train_dataset(self, seed: int) -> Dataset:
        context, latents = self._dims
        return TextWindows(self.corpus().train, context=context, min_length=latents)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        windows, lengths = batch  # (B, W), (B,)
        if self.max_transpose > 0:  # draws from the global RNG (seeded and checkpointed by the engine)
            shifts = torch.randint(-self.max_transpose, self.max_transpose + 1, (windows.shape[0],))
            windows = transpose(windows, shifts.to(windows.device))
        loss = lm_loss(model, windows, lengths, self._dims[1])
        return loss, {}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        context, latents = self._dims
        val = validation_windows(self.corpus().validation, num_windows=self.eval_windows,
                                 context=self.eval_context or context)
        result = evaluate_bits_per_byte(model, val, num_latents=latents, context=context,
                                        device=next(model.parameters()).device)
        bits = result["bits_per_byte"]  # per scored target that is an event (REST, HOLD or onset; ids >= 3)
        return {"validation_nats_per_event": bits * math.log(2), "validation_bits_per_event": bits,
                "num_validation_events": result["num_predicted_bytes"]}

    def describe(self) -> dict[str, Any]:
        c, (context, latents) = self.corpus(), self._dims
        return {"recipe": "music", "model": self.model, "model_overrides": self.model_overrides(),
                "context": context, "num_latents": latents, "max_transpose": self.max_transpose,
                "eval_windows": self.eval_windows, "eval_context": self.eval_context or context,
                "encoding_version": ENCODING_VERSION,
                "split": {"rule": f"sha256(piece name)[:8] big-endian % {VALIDATION_MODULUS} == 0 -> validation",
                          "train_pieces": len(c.train_pieces), "validation_pieces": len(c.validation_pieces),
                          "train_tokens": c.train.numel(), "validation_tokens": c.validation.numel()}}

    def summary(self, result: dict[str, Any]) -> str:
        return (f"validation nats per event: {result['validation_nats_per_event']:.4f} "
                f"({result['validation_bits_per_event']:.4f} bits) over {result['num_validation_events']:,} events, "
                f"trained in {result['train_seconds']:.0f} s")
