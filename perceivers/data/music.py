"""Bach chorales from music21's corpus as Perceiver AR token streams. Install with ``pip install 'perceivers[music]'``.

**Pieces.** Every ``bach/*.mxl`` / ``*.xml`` file of ``music21.corpus.getComposer('bach')`` with four voices: its
parts named Soprano, Alto, Tenor and Bass when it has such parts (instrument parts beside them are ignored), else all
parts of a four-part score in score order (other scores are left out), repeats expanded
(``expandRepeats``, so a repeated opening appears twice, as it is sung), ties merged. A piece's name is its file
stem (``bwv10.7``).

**Encoding** (version :data:`ENCODING_VERSION`): a grid of 16th notes; at each step the four voices S, A, T, B in
that order, one token each, so token ``4 t + v`` is voice ``v`` at step ``t``:

- ``PAD 0``, ``EOS 1``, ``SOS 2`` (the ids of :mod:`perceivers.tokenizers`' Perceiver AR bytes);
- ``REST 3``: the voice is silent at this step;
- ``HOLD 4``: the voice holds the note it sounded at an earlier step;
- ``ONSET + p`` (``ONSET = 5``, MIDI pitch ``p`` in 0..127): the voice starts pitch ``p`` at this step.

:data:`VOCAB_SIZE` = 133. Onsets and ends are rounded to the grid (the rare 32nd notes may merge with their
neighbour); a chord inside a voice keeps its highest pitch; a note of zero length (a grace note) is dropped. An
*event* is one REST, HOLD or onset token: the unit of "nats per event". A piece is one document
``[SOS, events..., EOS]``; documents are concatenated in name order into a training and a validation stream.

**Split**, by piece: ``bwvN.M`` is in validation iff ``int.from_bytes(sha256(name)[:8], "big") % 10 == 0`` (about
10 % of the pieces; independent of the machine and the corpus version). Several chorales share a melody with
different harmonisations, so a validation melody may also be sung in a training piece.

**Cache.** Parsing the ~400 MusicXML files takes a minute or two, so the encoded pieces are written once,
atomically, to ``CACHE/music/bach-chorales-e{ENCODING_VERSION}-music21-{version}.npz``, where ``CACHE`` is the
``cache_dir`` argument, else ``$PERCEIVERS_CACHE``, else ``$XDG_CACHE_HOME/perceivers``, else
``~/.cache/perceivers``; an unreadable cache file is rebuilt, and a folder that cannot be written is a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from perceivers.core.errors import ConfigError, UserError
from perceivers.core.files import CACHE_ENV, atomic_write, cache_root
from perceivers.tokenizers import AR_EOS_ID, AR_SOS_ID

ENCODING_VERSION = 1
REST, HOLD, ONSET = 3, 4, 5
NUM_PITCHES = 128
VOCAB_SIZE = ONSET + NUM_PITCHES  # 133
VOICES = ("soprano", "alto", "tenor", "bass")
STEPS_PER_QUARTER = 4  # 16th-note grid
VALIDATION_MODULUS = 10
#: What to install when music21 is missing (the error names it).
INSTALL_HINT = "pip install 'perceivers[music]' (or pip install music21)"


def music21_version(what: str = "the music recipe") -> str:
    """The installed music21's version; :class:`UserError` naming the ``music`` extra when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("music21")
    except PackageNotFoundError:
        raise UserError(f"{what} needs music21, which ships the Bach chorales: {INSTALL_HINT}") from None


def import_music21(what: str = "the music recipe") -> Any:
    """The ``music21`` module (imported lazily: it takes a second); :class:`UserError` naming the extra if absent."""
    try:
        import music21
    except ImportError:
        raise UserError(f"{what} needs music21, which ships the Bach chorales: {INSTALL_HINT}") from None
    return music21


def is_validation_piece(name: str) -> bool:
    """The split rule of the module doc."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_MODULUS == 0



def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the encoded chorales of this encoding and music21 version are cached."""
    return cache_root(cache_dir) / "music" / f"bach-chorales-e{ENCODING_VERSION}-music21-{music21_version()}.npz"


# --- encoding -------------------------------------------------------------------------------------------------------

def voice_parts(score: Any) -> list[Any] | None:
    """The S, A, T, B parts of a music21 score: the parts named Soprano, Alto, Tenor, Bass (one each), else all
    parts of a four-part score in score order; ``None`` for any other score."""
    parts = list(score.parts)
    named = {str(p.partName or "").strip().lower(): p for p in parts}
    if all(v in named for v in VOICES) and len(named) == len(parts):
        return [named[v] for v in VOICES]
    return parts if len(parts) == len(VOICES) else None


def encode_score(score: Any) -> np.ndarray:
    """Events ``(4 T,)`` int16 of a chorale's music21 score (:func:`voice_parts`), voices interleaved per
    16th-note step; ``ConfigError`` unless it has four voices holding notes."""
    parts = voice_parts(score)
    if parts is None:
        raise ConfigError(f"a chorale needs {len(VOICES)} parts (S, A, T, B, or parts so named), this score has "
                          f"{len(score.parts)}: {[p.partName for p in score.parts]}")
    notes = []  # per voice: (onset step, end step, MIDI pitch)
    for part in parts:
        voice = []
        for n in part.stripTies().flatten().notes:
            if n.duration.quarterLength <= 0:
                continue  # grace notes
            pitch = max(p.midi for p in n.pitches)
            onset = round(float(n.offset) * STEPS_PER_QUARTER)
            end = max(onset + 1, round(float(n.offset + n.duration.quarterLength) * STEPS_PER_QUARTER))
            voice.append((onset, end, pitch))
        notes.append(sorted(voice))
    steps = max((end for voice in notes for _, end, _ in voice), default=0)
    if steps == 0:
        raise ConfigError("a chorale needs notes, this score has none")
    return encode_voices(notes, steps)


def encode_voices(notes: list[list[tuple[int, int, int]]], steps: int) -> np.ndarray:
    """Events ``(4 steps,)`` int16 of four voices given as sorted ``(onset, end, MIDI pitch)`` notes in steps (a
    later onset cuts the note before it)."""
    grid = np.full((steps, len(VOICES)), REST, dtype=np.int16)  # (T, 4)
    for v, voice in enumerate(notes):
        for onset, end, pitch in voice:
            if not 0 <= pitch < NUM_PITCHES:
                raise ConfigError(f"MIDI pitch {pitch} is outside 0..{NUM_PITCHES - 1}")
            grid[onset, v] = ONSET + pitch
            grid[onset + 1:end, v] = HOLD
    return grid.reshape(-1)


def playable(events: Tensor | np.ndarray | list[int]) -> np.ndarray:
    """The events ``(4 T,)`` int64 of a sequence (no SOS) up to its first id that is not an event (PAD, EOS, SOS,
    out of the vocabulary), cut to whole steps."""
    ids = np.asarray(events.cpu() if isinstance(events, Tensor) else events, dtype=np.int64).reshape(-1)
    stops = np.flatnonzero((ids < REST) | (ids >= VOCAB_SIZE))
    ids = ids[:stops[0] if stops.size else ids.size]
    return ids[:ids.size - ids.size % len(VOICES)]


def decode_events(events: Tensor | np.ndarray | list[int]) -> list[list[tuple[int, int, int]]]:
    """The four voices' notes ``(onset step, end step, MIDI pitch)`` of an event sequence (no SOS), read up to its
    first PAD / EOS / SOS and cut to whole steps; a HOLD with no note to hold is a rest, so any ids decode."""
    grid = playable(events).reshape(-1, len(VOICES))  # (T, 4)
    voices: list[list[tuple[int, int, int]]] = []
    for v in range(len(VOICES)):
        notes, current = [], None  # current: [onset, pitch] of the sounding note
        for t, token in enumerate(grid[:, v].tolist()):
            if token == HOLD and current is not None:
                continue
            if current is not None:
                notes.append((current[0], t, current[1]))
                current = None
            if token >= ONSET:
                current = [t, token - ONSET]
        if current is not None:
            notes.append((current[0], grid.shape[0], current[1]))
        voices.append(notes)
    return voices


def to_score(voices: list[list[tuple[int, int, int]]]) -> Any:
    """A music21 ``Score`` of four parts (S, A, T, B; rests between the notes) from :func:`decode_events`' notes."""
    music21 = import_music21("writing music")
    score = music21.stream.Score()
    for name, notes in zip(VOICES, voices):
        part = music21.stream.Part()
        part.partName = name.capitalize()
        for onset, end, pitch in notes:
            note = music21.note.Note(pitch)
            note.quarterLength = (end - onset) / STEPS_PER_QUARTER
            part.insert(onset / STEPS_PER_QUARTER, note)
        score.insert(0, part)
    return score


def transpose(windows: Tensor, shifts: Tensor) -> Tensor:
    """Windows ``(B, W)`` with every onset moved by ``shifts (B,)`` semitones; a row whose moved pitches would leave
    0..127 is kept as it is."""
    onset = windows >= ONSET
    moved = windows + shifts[:, None].to(windows.dtype) * onset
    bad = (onset & ((moved < ONSET) | (moved >= VOCAB_SIZE))).any(dim=1, keepdim=True)  # (B, 1)
    return torch.where(bad, windows, moved)


# --- corpus ---------------------------------------------------------------------------------------------------------

def chorale_paths() -> list[Path]:
    """The MusicXML files of music21's Bach corpus, by name."""
    music21 = import_music21()
    paths = [Path(p) for p in music21.corpus.getComposer("bach") if Path(p).suffix in (".mxl", ".xml")]
    return sorted(paths, key=lambda p: p.stem)


def parse_chorale(path: str | os.PathLike) -> Any:
    """The music21 score of one chorale file, repeats expanded where music21 can."""
    music21 = import_music21()
    score = music21.converter.parse(str(path))
    try:
        return score.expandRepeats()
    except Exception:  # noqa: BLE001 (music21 raises assorted errors on repeats it cannot resolve)
        return score


def encode_files(paths: list[Path]) -> dict[str, np.ndarray]:
    """Encoded four-part chorales ``{name: events (4 T,) int16}`` of ``paths`` (others skipped)."""
    pieces = {}
    for path in paths:
        score = parse_chorale(path)
        if voice_parts(score) is not None:
            pieces[Path(path).stem] = encode_score(score)
    return pieces


def save_pieces(path: str | os.PathLike, pieces: dict[str, np.ndarray]) -> None:
    """Write ``pieces`` atomically as an ``.npz`` of ``names``, ``offsets (P + 1,)`` and ``events`` (concatenated)."""
    names = sorted(pieces)
    lengths = [len(pieces[n]) for n in names]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    events = np.concatenate([pieces[n] for n in names]).astype(np.int16) if names else np.zeros(0, np.int16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, names=np.array(names, dtype=str), offsets=offsets, events=events)

    atomic_write(path, write)


def read_pieces(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The pieces of :func:`save_pieces`; ``OSError`` / ``ValueError`` / ``KeyError`` on a damaged file."""
    with np.load(path, allow_pickle=False) as data:
        names, offsets, events = list(data["names"]), data["offsets"], data["events"]
    if len(offsets) != len(names) + 1 or offsets[-1] != len(events):
        raise ValueError(f"{path} is inconsistent: {len(names)} names, {len(offsets)} offsets")
    return {str(n): events[offsets[i]:offsets[i + 1]] for i, n in enumerate(names)}


def load_pieces(cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Every encoded chorale, from the cache (built on first use; see the module doc)."""
    path = cache_path(cache_dir)
    if path.is_file():
        try:
            return read_pieces(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt
    pieces = encode_files(chorale_paths())
    try:
        save_pieces(path, pieces)
    except OSError as exc:  # a read-only or full cache folder costs the next run a parse, not this one its data
        warnings.warn(f"could not cache the encoded chorales at {path} ({exc}); set {CACHE_ENV} or cache_dir to a "
                      "writable folder to skip the parse next time", stacklevel=2)
    return pieces


@dataclass(frozen=True)
class MusicCorpus:
    """Training and validation streams ``(T,)`` int16 of ``[SOS, events..., EOS]`` documents and their pieces."""

    train: Tensor
    validation: Tensor
    train_pieces: tuple[str, ...]
    validation_pieces: tuple[str, ...]
    pieces: dict[str, np.ndarray]


def _stream(pieces: dict[str, np.ndarray], names: list[str]) -> Tensor:
    parts = []
    for name in names:
        parts += [np.array([AR_SOS_ID], np.int16), pieces[name].astype(np.int16), np.array([AR_EOS_ID], np.int16)]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int16))


def split_corpus(pieces: dict[str, np.ndarray]) -> MusicCorpus:
    """The fixed split of the module doc; ``ConfigError`` unless both sides hold a piece."""
    names = sorted(pieces)
    val = [n for n in names if is_validation_piece(n)]
    train = [n for n in names if not is_validation_piece(n)]
    if not train or not val:
        raise ConfigError(f"the chorales split into {len(train)} training and {len(val)} validation pieces: "
                          "the split needs at least one of each")
    return MusicCorpus(_stream(pieces, train), _stream(pieces, val), tuple(train), tuple(val), pieces)


def load_music_corpus(cache_dir: str | os.PathLike | None = None) -> MusicCorpus:
    """The encoded, split Bach chorales (parsed once, then read from the cache)."""
    return split_corpus(load_pieces(cache_dir))
