"""Spoken words synthesised with espeak-ng: the data of ``perceivers train speech``. **Everything is synthetic**:
no human recording is involved; the words are spoken by the espeak-ng library and voices that the
``espeakng-loader`` package ships (``pip install 'perceivers[speech]'``), called through ``ctypes``.

**Words** (:data:`WORDS`, the 20 core words of Speech Commands v1): the ten digits ``zero`` .. ``nine`` and
``yes no up down left right on off stop go``; the label of a word is its index in :data:`WORDS`.

**Voices.** A voice is an English accent (:data:`ACCENTS`: espeak-ng's British, American, Scottish, RP,
Lancastrian, West Midlands, Caribbean and New York English) with a voice variant (``en-us+f3``: formants,
pitch range, breathiness; ``klatt*`` use espeak's Klatt synthesiser). **The test set holds out whole voices**:
the variants :data:`TEST_VARIANTS` are never heard in training, in any accent; training uses
:data:`TRAIN_VARIANTS`. So the test measures generalisation to unseen speakers (8 x 3 = 24 voices).

**Renditions.** Each (voice, word) is synthesised ``renditions`` times (training) or ``test_renditions`` times
(test) at a speaking rate drawn uniformly from ``rate`` (words per minute) and a base pitch from ``pitch``
(espeak's 0..100 scale), from a NumPy generator seeded with ``seed`` in a fixed order. Each clip is
resampled from espeak's 22,050 Hz to ``sample_rate`` (band-limited FFT resampling), trimmed of leading and
trailing silence, cut to at most one clip length (centred) and scaled to a peak of 0.9.

**Clips** of ``clip_seconds`` (``num_samples = clip_seconds x sample_rate``, default 1 s at 16 kHz, as Speech
Commands): :func:`place_words` puts each word at an offset in the clip and adds white noise at a signal-to-noise
ratio; training draws a new offset, gain and SNR for every example of every step; the test clips use offsets and
SNRs drawn once from the task's ``eval_seed``.

**Determinism.** espeak-ng keeps state from one utterance to the next, so the same call twice in one process can
give different samples, while a fresh process making the same calls in the same order gives identical samples
(espeak 1.52, its noise generator seeded with ``espeak_ng_SetRandSeed(0)``). Every synthesis therefore runs in a
fresh child process (:mod:`perceivers.data.espeak_worker`, which imports only ctypes and NumPy), a data set in a
fixed order.

**Cache.** The synthesised words are written once, atomically, to
``CACHE/speech/words-s{SYNTH_VERSION}-espeak-{version}-{key}.npz``, ``key`` a hash of the settings; ``CACHE``
is the ``cache_dir`` argument, else ``$PERCEIVERS_CACHE``, else ``$XDG_CACHE_HOME/perceivers``, else
``~/.cache/perceivers``; samples are stored as float16 (peak 0.9: a relative precision of 2^-11). An unreadable
cache file is rebuilt; a cache folder that cannot be written is a warning (the words are synthesised again next
time).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from perceivers.core.errors import ConfigError, UserError
from perceivers.core.files import atomic_write, cache_root
from perceivers.core.validation import check_float, check_int, fail
from perceivers.data import espeak_worker
from perceivers.data.espeak_worker import ESPEAK_RATE

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
NUM_CLASSES = len(WORDS)
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m2", "m4", "m5", "m6", "m7", "f1", "f3", "f4", "klatt", "klatt3", "croak")
TEST_VARIANTS = ("m3", "f2", "klatt2")
SYNTH_VERSION = 1  # bump when the synthesis or the post-processing changes (part of the cache file name)
#: What to install when espeakng-loader is missing (the error names it).
INSTALL_HINT = "pip install 'perceivers[speech]' (or pip install espeakng-loader)"

def voice_name(accent: str, variant: str) -> str:
    """espeak-ng's name of an accent with a variant: ``en-us+f3``."""
    return f"{accent}+{variant}"


def _espeak_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError:  # a missing optional dependency is the user's to install: one line on the command line
        raise UserError(f"the speech data needs espeakng-loader, which ships the espeak-ng library and its voices: "
                        f"{INSTALL_HINT}") from None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def synthesize_raw(requests: list[tuple[str, str, int, int]]) -> tuple[str, list[np.ndarray]]:
    """espeak-ng's version and the 22,050 Hz int16 samples of each ``(word, voice, rate wpm, pitch 0..100)``,
    synthesised in that order by a fresh child process (:mod:`perceivers.data.espeak_worker`: deterministic).

    :class:`~perceivers.core.errors.UserError` when espeakng-loader is missing or its library cannot be loaded,
    :class:`~perceivers.core.errors.ConfigError` for a voice espeak-ng does not know."""
    library, data = _espeak_paths()
    with tempfile.TemporaryDirectory(prefix="perceivers-speech-") as tmp:
        request_file, out_file = Path(tmp) / "requests.json", Path(tmp) / "samples.npz"
        request_file.write_text(json.dumps(requests))
        proc = subprocess.run([sys.executable, espeak_worker.__file__, library, data, str(request_file),
                               str(out_file)], check=False, capture_output=True, text=True)
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        if proc.returncode == espeak_worker.LOAD_FAILED:
            raise UserError(f"{message}; reinstall espeakng-loader: {INSTALL_HINT}")
        if proc.returncode == espeak_worker.UNKNOWN_VOICE:
            raise ConfigError(message)
        if proc.returncode != 0:
            raise RuntimeError(f"the espeak-ng synthesis process failed (exit status {proc.returncode}): {message}")
        with np.load(out_file) as f:
            ends = np.cumsum(f["lengths"])
            return str(f["version"]), np.split(f["audio"], ends[:-1]) if len(ends) else []


@lru_cache(maxsize=1)
def espeak_version() -> str:
    """The version of the installed espeak-ng library (``1.52.0``; ``espeak_Info`` needs no initialisation, so this
    process synthesises nothing)."""
    library, _ = _espeak_paths()
    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        raise UserError(f"could not load the espeak-ng library {library} (from espeakng-loader): {exc}; "
                        f"reinstall it: {INSTALL_HINT}") from None
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling of ``samples (S,)`` to ``(round(S * to_rate / from_rate),)`` float32 (FFT: the
    spectrum is cut or zero-padded)."""
    x = np.asarray(samples, dtype=np.float64)
    n_out = round(len(x) * to_rate / from_rate)
    if n_out == 0 or len(x) == 0:
        return np.zeros(n_out, np.float32)
    spectrum = np.fft.rfft(x)
    keep = min(len(spectrum), n_out // 2 + 1)
    return (np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(x))).astype(np.float32)


def trim_silence(samples: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """``samples`` without the leading and trailing samples below ``threshold`` x the peak (all of them if silent)."""
    loud = np.flatnonzero(np.abs(samples) >= threshold * np.abs(samples).max(initial=0.0))
    return samples[loud[0]:loud[-1] + 1] if len(loud) and np.abs(samples).max() > 0 else samples[:0]


def prepare_word(samples: np.ndarray, sample_rate: int, num_samples: int) -> np.ndarray:
    """espeak's int16 samples -> float32 at ``sample_rate``, trimmed, at most ``num_samples`` long (centred cut),
    peak 0.9; :class:`RuntimeError` if the word is silent."""
    word = trim_silence(resample(samples, ESPEAK_RATE, sample_rate))
    if len(word) == 0:
        raise RuntimeError("espeak-ng produced a silent word")
    if len(word) > num_samples:
        start = (len(word) - num_samples) // 2
        word = word[start:start + num_samples]
    return (0.9 * word / np.abs(word).max()).astype(np.float32)


def synthesize(word: str, voice: str = "en-us", *, rate: int = 175, pitch: int = 50, sample_rate: int = 16_000,
               clip_seconds: float = 1.0) -> np.ndarray:
    """``word`` spoken by ``voice`` as float32 samples ``(L,)`` at ``sample_rate``, silence trimmed, ``L <=
    clip_seconds x sample_rate``, peak 0.9 (one fresh child process: identical on every call)."""
    check_int("sample_rate", sample_rate, minimum=1000)
    _, (samples,) = synthesize_raw([(word, voice, rate, pitch)])
    return prepare_word(samples, sample_rate, round(clip_seconds * sample_rate))


# --- the data set -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SpeechSettings:
    """What is synthesised (see the module docstring); validated on construction."""

    sample_rate: int = 16_000
    clip_seconds: float = 1.0
    accents: tuple[str, ...] = ACCENTS
    train_variants: tuple[str, ...] = TRAIN_VARIANTS
    test_variants: tuple[str, ...] = TEST_VARIANTS  # held out: disjoint from train_variants
    renditions: int = 2  # per training (voice, word)
    test_renditions: int = 1  # per test (voice, word)
    rate: tuple[int, int] = (120, 230)  # words per minute, uniform
    pitch: tuple[int, int] = (15, 85)  # espeak's base pitch 0..100, uniform
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("sample_rate", self.sample_rate, minimum=1000)
        check_float("clip_seconds", self.clip_seconds, minimum=0.1, maximum=10.0)
        check_int("renditions", self.renditions)
        check_int("test_renditions", self.test_renditions)
        check_int("seed", self.seed, minimum=0)
        for name in ("accents", "train_variants", "test_variants"):
            value = getattr(self, name)
            if not (isinstance(value, tuple) and value and all(isinstance(v, str) and v.strip() for v in value)):
                fail(name, value, "a non-empty tuple of espeak-ng names (accents: en-us, ...; variants: m1, f2, ...)")
            if len(set(value)) != len(value):
                fail(name, value, "names without repeats")
        if set(self.train_variants) & set(self.test_variants):
            fail("test_variants", self.test_variants, f"variants that are not training variants "
                 f"({', '.join(sorted(set(self.train_variants) & set(self.test_variants)))} are)")
        for name, (low, high), limits in (("rate", self.rate, (80, 450)), ("pitch", self.pitch, (0, 100))):
            if not (isinstance(low, int) and isinstance(high, int) and limits[0] <= low <= high <= limits[1]):
                fail(name, (low, high), f"two ints low <= high in [{limits[0]}, {limits[1]}]")

    @property
    def num_samples(self) -> int:
        """Samples per clip."""
        return round(self.clip_seconds * self.sample_rate)

    def train_voices(self) -> tuple[str, ...]:
        """The training voices: every accent with every training variant (``en-us+f3``)."""
        return tuple(voice_name(a, v) for a in self.accents for v in self.train_variants)

    def test_voices(self) -> tuple[str, ...]:
        """The held-out test voices: every accent with every test variant."""
        return tuple(voice_name(a, v) for a in self.accents for v in self.test_variants)

    def key(self) -> str:
        """A short hash of the settings (part of the cache file name)."""
        text = json.dumps({**self.__dict__, "words": WORDS}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SpeechWords:
    """Variable-length words, concatenated: word ``i`` is ``audio[starts[i]:starts[i] + lengths[i]]``."""

    audio: Tensor  # (total,) float32
    starts: Tensor  # (N,) int64
    lengths: Tensor  # (N,) int64
    labels: Tensor  # (N,) int64: index in WORDS
    voices: tuple[str, ...]  # (N,) espeak voice of each word

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SpeechSplit:
    train: SpeechWords
    test: SpeechWords
    settings: SpeechSettings
    espeak_version: str


def requests(settings: SpeechSettings, voices: tuple[str, ...], renditions: int,
             rng: np.random.Generator) -> list[tuple[str, str, int, int]]:
    """``(word, voice, rate, pitch)`` for every voice, word and rendition, in that order, rate and pitch from
    ``rng``."""
    out = []
    for voice in voices:
        for word in WORDS:
            for _ in range(renditions):
                rate = int(rng.integers(settings.rate[0], settings.rate[1] + 1))
                out.append((word, voice, rate, int(rng.integers(settings.pitch[0], settings.pitch[1] + 1))))
    return out


def _words(arrays: list[np.ndarray], requests_: list[tuple[str, str, int, int]]) -> SpeechWords:
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    labels = np.array([WORDS.index(r[0]) for r in requests_], dtype=np.int64)
    return SpeechWords(torch.from_numpy(np.concatenate(arrays)), torch.from_numpy(starts), torch.from_numpy(lengths),
                       torch.from_numpy(labels), tuple(r[1] for r in requests_))


def synthesize_split(settings: SpeechSettings) -> SpeechSplit:
    """Synthesise the training and test words (one child process, fixed order: deterministic)."""
    rng = np.random.default_rng(settings.seed)
    train_req = requests(settings, settings.train_voices(), settings.renditions, rng)
    test_req = requests(settings, settings.test_voices(), settings.test_renditions, rng)
    version, raw = synthesize_raw(train_req + test_req)
    words = [prepare_word(r, settings.sample_rate, settings.num_samples) for r in raw]
    n = len(train_req)
    return SpeechSplit(_words(words[:n], train_req), _words(words[n:], test_req), settings, version)



def cache_path(settings: SpeechSettings, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the words of ``settings`` synthesised by the installed espeak-ng are cached."""
    return (cache_root(cache_dir) / "speech"
            / f"words-s{SYNTH_VERSION}-espeak-{espeak_version()}-{settings.key()}.npz")


def write_words_file(split: SpeechSplit, path: Path) -> None:
    """Write ``split``'s words to ``path`` (``.npz``, samples as float16) atomically."""
    arrays: dict[str, Any] = {}
    for part in ("train", "test"):
        words = getattr(split, part)
        arrays.update({f"{part}_audio": words.audio.numpy().astype(np.float16), f"{part}_lengths": words.lengths.numpy(),
                       f"{part}_labels": words.labels.numpy(), f"{part}_voices": np.array(words.voices)})
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write(path, write)


def read_words_file(path: Path, settings: SpeechSettings, version: str) -> SpeechSplit:
    """The split that :func:`write_words_file` wrote to ``path`` (``OSError`` / ``ValueError`` / ``KeyError`` if it
    cannot be read)."""
    parts = {}
    with np.load(path, allow_pickle=False) as f:
        for part in ("train", "test"):
            lengths = f[f"{part}_lengths"].astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            parts[part] = SpeechWords(torch.from_numpy(f[f"{part}_audio"].astype(np.float32)),
                                      torch.from_numpy(starts), torch.from_numpy(lengths),
                                      torch.from_numpy(f[f"{part}_labels"].astype(np.int64)),
                                      tuple(str(v) for v in f[f"{part}_voices"]))
    return SpeechSplit(parts["train"], parts["test"], settings, version)


@lru_cache(maxsize=2)
def load_speech(settings: SpeechSettings = SpeechSettings(), cache_dir: str | None = None) -> SpeechSplit:
    """The synthesised words of ``settings``: read from the cache, else synthesised and cached (see the module
    docstring). Read once per process: do not modify the tensors in place."""
    path = cache_path(settings, cache_dir)
    if path.is_file():
        try:
            return read_words_file(path, settings, espeak_version())
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache file is rebuilt
    split = synthesize_split(settings)
    try:
        write_words_file(split, path)
    except OSError as exc:  # a read-only or full cache folder: the words are in memory, the next run synthesises again
        warnings.warn(f"could not cache the synthesised words in {path}: {exc}", stacklevel=2)
    return split


def place_words(words: SpeechWords, index: Tensor, num_samples: int, *, offsets: Tensor, gains: Tensor,
                snr_db: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Clips ``(B, num_samples)``: word ``index[b]`` at sample ``offsets[b]`` (clamped so that it fits), scaled by
    ``gains[b]``, plus white noise at ``snr_db[b]`` dB below the word's power (from ``generator``)."""
    clips = torch.zeros(len(index), num_samples)
    for b, i in enumerate(index.tolist()):
        start, length = int(words.starts[i]), int(words.lengths[i])
        at = min(max(int(offsets[b]), 0), num_samples - length)
        clips[b, at:at + length] = words.audio[start:start + length] * gains[b]
    power = clips.pow(2).sum(1) / words.lengths[index].clamp(min=1)  # (B,) mean power of the word
    noise = torch.randn(clips.shape, generator=generator)
    return clips + noise * (power / 10 ** (snr_db / 10)).sqrt()[:, None]


def random_placement(lengths: Tensor, num_samples: int, *, gain: tuple[float, float], snr_db: tuple[float, float],
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Uniform offsets (the word fits), gains and SNRs for words of ``lengths (B,)``: keyword arguments of
    :func:`place_words`."""
    room = (num_samples - lengths).clamp(min=0)
    u = torch.rand(3, len(lengths), generator=generator)
    return {"offsets": (u[0] * (room + 1)).long().clamp(max=room), "gains": gain[0] + u[1] * (gain[1] - gain[0]),
            "snr_db": snr_db[0] + u[2] * (snr_db[1] - snr_db[0])}
