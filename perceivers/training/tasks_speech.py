"""Task of ``perceivers train speech``: classify spoken words from the raw waveform, tested on held-out voices.

The words are synthesised with espeak-ng (:mod:`perceivers.data.speech`: **synthetic speech**, 20 words, 8 English
accents x 12 voice variants for training, the same accents with 3 other variants for the test; ``pip install
'perceivers[speech]'``). The model is a Perceiver IO on raw audio (the papers' AudioSet setting, small):
patches of the waveform + 1-D Fourier features -> latents -> one class query.

Training places each word at a random offset of the 1 s clip with a random gain and white noise at a random SNR
(new draws every step, from the engine's seeded RNG); the test clips are drawn once from ``eval_seed`` at
``test_snr_db``. Metrics: held-out-voice accuracy (overall and per variant) against the majority-class baseline
(the most frequent training word; the classes are balanced, so it equals chance, 1/20). ``on_end`` writes the
test confusion matrix (``confusion.json`` and ``confusion.png``) into the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from perceivers.core.files import atomic_write
from perceivers.core.validation import check_float, check_int, check_prob, fail
from perceivers.data.speech import (
    ACCENTS,
    NUM_CLASSES,
    TEST_VARIANTS,
    TRAIN_VARIANTS,
    WORDS,
    SpeechSettings,
    SpeechWords,
    load_speech,
    place_words,
    random_placement,
)
from perceivers.models import create_model
from perceivers.models.perceiver_io import PerceiverIOConfig
from perceivers.preprocessors import ModalityConfig
from perceivers.training.losses import classification_loss
from perceivers.training.task import Task, model_config

#: What the speech task trains and ``perceivers eval speech`` scores.
SPEECH_MODEL = f"Perceiver IO raw-audio classifier (an 'audio' modality preprocessor) into {NUM_CLASSES} classes"


def is_speech_classifier(config: Any) -> bool:
    """Whether ``config`` is a :data:`SPEECH_MODEL`."""
    p = getattr(config, "preprocessor", None)
    return (isinstance(config, PerceiverIOConfig) and isinstance(p, ModalityConfig) and p.kind == "audio"
            and config.decoder.type == "classification" and config.decoder.num_outputs == NUM_CLASSES)


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``(K, K)`` int64 counts: row = true class, column = predicted class, of ``predictions (N,)``, ``labels (N,)``."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@lru_cache(maxsize=2)
def _test_clips(settings: SpeechSettings, eval_seed: int, snr_db: float) -> tuple[Tensor, Tensor]:
    """The fixed test clips ``(N, S)`` and labels ``(N,)``: offsets from ``eval_seed``, unit gain, ``snr_db``."""
    test = load_speech(settings).test
    generator = torch.Generator().manual_seed(eval_seed)
    placement = random_placement(test.lengths, settings.num_samples, gain=(1.0, 1.0), snr_db=(snr_db, snr_db),
                                 generator=generator)
    clips = place_words(test, torch.arange(len(test)), settings.num_samples, **placement, generator=generator)
    return clips, test.labels


@dataclass(frozen=True, kw_only=True)
class SpeechTask(Task):
    """Classify 1 s clips of synthesised spoken words (:mod:`perceivers.data.speech`) from the raw waveform with a
    Perceiver IO; test on voices never heard in training."""

    name: ClassVar[str] = "speech"
    model_kind: ClassVar[str] = SPEECH_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered Perceiver IO raw-audio classifier into 20 classes (perceiver-io-speech, ...)",
        "sample_rate": "samples per second of the clips (the model's num_samples / sample_rate = clip seconds)",
        "accents": "espeak-ng English accents, comma-separated (each is spoken with every variant)",
        "train_variants": "espeak-ng voice variants of the training voices, comma-separated",
        "test_variants": "held-out voice variants of the test voices (never in training), comma-separated",
        "renditions": "synthesised renditions of each training (voice, word), each at a random rate and pitch",
        "snr_min": "training noise: lowest signal-to-noise ratio in dB (uniform in [snr_min, snr_max])",
        "snr_max": "training noise: highest signal-to-noise ratio in dB",
        "min_gain": "training augmentation: the word is scaled by a gain uniform in [min_gain, 1]",
        "test_snr_db": "signal-to-noise ratio of the fixed test clips, in dB",
        "label_smoothing": "label smoothing of the training cross-entropy (0: none)",
        "eval_seed": "seed of the test clips' offsets and noise",
        "synth_seed": "seed of the synthesised rates and pitches"}

    model: str = "perceiver-io-speech"
    sample_rate: int = 16_000
    accents: tuple[str, ...] = ACCENTS
    train_variants: tuple[str, ...] = TRAIN_VARIANTS
    test_variants: tuple[str, ...] = TEST_VARIANTS
    renditions: int = 2
    snr_min: float = 5.0
    snr_max: float = 40.0
    min_gain: float = 0.3
    test_snr_db: float = 20.0
    label_smoothing: float = 0.0
    eval_seed: int = 1234
    synth_seed: int = 0

    def __post_init__(self) -> None:
        check_int("sample_rate", self.sample_rate, minimum=1000)
        check_int("renditions", self.renditions)
        check_float("snr_min", self.snr_min, minimum=-20.0, maximum=100.0)
        check_float("snr_max", self.snr_max, minimum=-20.0, maximum=100.0)
        if self.snr_max < self.snr_min:
            fail("snr_max", self.snr_max, f"a float >= snr_min = {self.snr_min}")
        check_float("min_gain", self.min_gain, minimum=0.0, maximum=1.0, min_inclusive=False)
        check_float("test_snr_db", self.test_snr_db, minimum=-20.0, maximum=100.0)
        check_prob("label_smoothing", self.label_smoothing)
        check_int("eval_seed", self.eval_seed, minimum=0)
        check_int("synth_seed", self.synth_seed, minimum=0)
        SpeechSettings(accents=self.accents, train_variants=self.train_variants, test_variants=self.test_variants)

    def fits(self, config: Any) -> bool:
        return is_speech_classifier(config)

    def num_samples(self) -> int:
        """Samples per clip: the registered model's."""
        config = model_config("model", self.model, is_speech_classifier, SPEECH_MODEL)
        return config.preprocessor.num_samples

    def data_settings(self, num_samples: int | None = None) -> SpeechSettings:
        """What :mod:`perceivers.data.speech` synthesises for clips of ``num_samples`` (default: the model's)."""
        n = self.num_samples() if num_samples is None else num_samples
        return SpeechSettings(sample_rate=self.sample_rate, clip_seconds=n / self.sample_rate,
                              accents=self.accents, train_variants=self.train_variants,
                              test_variants=self.test_variants, renditions=self.renditions, seed=self.synth_seed)

    def for_model(self, model: nn.Module) -> SpeechTask:
        """This task with the clip length of the loaded model."""
        super().for_model(model)  # ConfigError unless the model fits
        return _Loaded(**self.settings(), loaded_samples=model.config.preprocessor.num_samples)

    def build_model(self) -> nn.Module:
        model_config("model", self.model, is_speech_classifier, SPEECH_MODEL)
        return create_model(self.model)

    def words(self) -> tuple[SpeechWords, SpeechWords]:
        """The training and test words (synthesised once, then read from the cache)."""
        split = load_speech(self.data_settings())
        return split.train, split.test

    def train_dataset(self, seed: int) -> Dataset:
        train, _ = self.words()
        return TensorDataset(torch.arange(len(train)), train.labels)  # word indices (N,), labels (N,)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        index, labels = batch
        train, _ = self.words()
        settings = self.data_settings()
        # a new offset, gain and noise per example, from the global RNG (seeded and checkpointed by the engine)
        placement = random_placement(train.lengths[index.cpu()], settings.num_samples, gain=(self.min_gain, 1.0),
                                     snr_db=(self.snr_min, self.snr_max))
        clips = place_words(train, index.cpu(), settings.num_samples, **placement).to(labels.device)
        logits = model(clips)  # (B, 20)
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return classification_loss(logits, labels, self.label_smoothing), {"accuracy": accuracy}

    @torch.no_grad()
    def predict(self, model: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``(N, 20)`` of the test clips, their labels ``(N,)`` and voice-variant ids ``(N,)`` (index in
        ``test_variants``)."""
        clips, labels = _test_clips(self.data_settings(), self.eval_seed, self.test_snr_db)
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        logits = torch.cat([model(clips[i:i + 128].to(device)).float().cpu() for i in range(0, len(clips), 128)])
        model.train(was_training)
        variants = torch.tensor([self.test_variants.index(v.split("+")[-1]) for v in self.words()[1].voices])
        return logits, labels, variants

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        logits, labels, variants = self.predict(model)
        train, _ = self.words()
        correct = (logits.argmax(-1) == labels).double()
        majority = int(torch.bincount(train.labels, minlength=NUM_CLASSES).argmax())
        result = {"test_accuracy": float(correct.mean()),
                  "test_loss": float(torch.nn.functional.cross_entropy(logits, labels)),
                  "num_test": len(labels), "majority_baseline": int((labels == majority).sum()) / len(labels),
                  "chance": 1.0 / NUM_CLASSES}
        for i, variant in enumerate(self.test_variants):
            result[f"test_accuracy_{variant}"] = float(correct[variants == i].mean())
        return result

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """``confusion.json`` (counts, rows = true word) and ``confusion.png`` (needs matplotlib) of the test set."""
        logits, labels, _ = self.predict(model)
        matrix = confusion_matrix(logits.argmax(-1), labels, NUM_CLASSES)
        text = json.dumps({"words": list(WORDS), "counts": matrix.tolist()}, indent=1).encode()
        atomic_write(out_dir / "confusion.json", lambda tmp: Path(tmp).write_bytes(text))
        draw_confusion(matrix, out_dir / "confusion.png",
                       title=f"held-out voices ({', '.join(self.test_variants)}): accuracy "
                             f"{float(matrix.diag().sum()) / max(int(matrix.sum()), 1):.1%}")

    def describe(self) -> dict[str, Any]:
        data = self.data_settings()
        return {"recipe": "speech", **self.settings(), "num_samples": data.num_samples,
                "data": {"source": "synthetic: espeak-ng (espeakng-loader) voices", "words": list(WORDS),
                         "espeak_version": load_speech(data).espeak_version, "rate_wpm": list(data.rate),
                         "pitch": list(data.pitch), "train_words": len(self.words()[0]),
                         "test_words": len(self.words()[1])}}

    def summary(self, result: dict[str, Any]) -> str:
        n, acc = result["num_test"], result["test_accuracy"]
        return (f"held-out-voice accuracy: {acc:.4f} ({round(acc * n)}/{n}); majority class "
                f"{result.get('majority_baseline', 1 / NUM_CLASSES):.4f} (chance 1/{NUM_CLASSES}); trained in "
                f"{result['train_seconds']:.0f} s")


@dataclass(frozen=True, kw_only=True)
class _Loaded(SpeechTask):
    """A :class:`SpeechTask` whose clip length is a loaded model's, not the registered ``model``'s."""

    loaded_samples: int

    def num_samples(self) -> int:
        return self.loaded_samples

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in super().settings().items() if k != "loaded_samples"}


def draw_confusion(matrix: Tensor, path: Path, *, title: str) -> None:
    """Draw ``matrix (K, K)`` (rows true, columns predicted, labelled with :data:`WORDS`) as a PNG at ``path``;
    nothing without matplotlib (the counts are in ``confusion.json``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7.2, 6.4))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(WORDS)), WORDS, rotation=90, fontsize=8)
    ax.set_yticks(range(len(WORDS)), WORDS, fontsize=8)
    ax.set_xlabel("predicted word")
    ax.set_ylabel("spoken word")
    top = int(matrix.max()) if matrix.numel() else 0
    for (i, j), count in zip(torch.cartesian_prod(torch.arange(len(WORDS)), torch.arange(len(WORDS))).tolist(),
                             matrix.flatten().tolist()):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                    color="white" if count > top / 2 else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)

