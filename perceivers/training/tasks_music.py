"""Task of the ``music`` recipe: Perceiver AR on the Bach chorales of music21's corpus (:mod:`perceivers.data.music`:
a 16th-note grid, the four voices interleaved per step, one token per voice and step).

The loss is the ``text`` recipe's (the mean next-token cross-entropy of the latent predictions); training windows
are the ``text`` recipe's windows of the training stream (cut to start at a piece's SOS where one fits), each
transposed by a random number of semitones in ``[-max_transpose, max_transpose]``. Validation scores the last
``N`` events of ``eval_windows`` fixed windows of the held-out pieces: nats (and bits) per event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from perceivers.core.validation import check_int, fail
from perceivers.data.music import (
    ENCODING_VERSION,
    VALIDATION_MODULUS,
    VOCAB_SIZE,
    MusicCorpus,
    load_music_corpus,
    transpose,
)
from perceivers.training.tasks import (
    AR_ALIASES,
    AR_SETTING_HELP,
    ARStreamTask,
    is_perceiver_ar,
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
class MusicTask(ARStreamTask):
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

    accepts: ClassVar[Callable[[Any], bool]] = staticmethod(is_music_perceiver_ar)
    expected_model: ClassVar[str] = MUSIC_MODEL

    model: str = "perceiver-ar-music"
    max_transpose: int = 5
    eval_windows: int = 128
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("max_transpose", self.max_transpose, minimum=0)
        if self.max_transpose > 24:
            fail("max_transpose", self.max_transpose, "at most 24 semitones")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            fail("cache_dir", self.cache_dir, "a folder path (str) or None")

    def fits(self, config: Any) -> bool:
        return is_music_perceiver_ar(config)

    def corpus(self) -> MusicCorpus:
        return music_corpus(self.cache_dir)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        windows, lengths = batch  # (B, W), (B,)
        if self.max_transpose > 0:  # draws from the global RNG (seeded and checkpointed by the engine)
            shifts = torch.randint(-self.max_transpose, self.max_transpose + 1, (windows.shape[0],))
            windows = transpose(windows, shifts.to(windows.device))
        return super().training_loss(model, (windows, lengths))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        result = self.score_validation(model)
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
