"""Byte-level text corpus: the ``*.py`` source files of the running interpreter's standard library.

Tokens: the Perceiver AR byte ids of :class:`perceivers.tokenizers.ARBytesTokenizer` (PAD 0, EOS 1, SOS 2,
byte ``b`` -> ``b + 3``; 259 ids). Each file is one document ``[SOS, bytes..., EOS]``; documents are concatenated
in sorted path order into one training stream and one validation stream.

Split, by file: a file (path relative to the stdlib root, POSIX separators) is in *validation* iff
``int.from_bytes(sha256(path.encode()).digest()[:8], "big") % 10 == 0`` (about 10 % of the files), so
the split never depends on the file list, the machine or the Python hash seed.

Files under ``site-packages``/``dist-packages`` are skipped; so are test suites (any directory named
``test``, ``tests`` or ``idle_test``) unless ``include_tests=True``.

Training items (:class:`TextWindows`) are the windows of ``context + 1`` tokens of the training stream. A window
holding a document start (SOS) that leaves at least ``min_length + 1`` tokens is cut to begin at the last such
SOS (right-padded), so the model also learns short contexts whose positions start at the SOS, as a
generation prompt does (the official crop rule keeps at least ``num_latents + 1`` tokens).
Validation uses ``num_windows`` fixed, evenly spaced full windows of the validation stream.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from perceivers.core.errors import ConfigError
from perceivers.core.validation import check_int
from perceivers.tokenizers import AR_BYTE_OFFSET, AR_EOS_ID, AR_SOS_ID

VALIDATION_MODULUS = 10  # a file is in validation iff its path hash % 10 == 0
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_TEST_DIRS = {"test", "tests", "idle_test"}


def is_validation_file(relative_path: str) -> bool:
    """The split rule (see the module doc): ``relative_path`` uses ``/`` separators."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % VALIDATION_MODULUS == 0


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: str | Path | None = None, *, include_tests: bool = False) -> list[str]:
    """Sorted POSIX paths (relative to ``root``, default the stdlib) of the ``*.py`` files of the corpus."""
    base = Path(root) if root is not None else stdlib_root()
    if not base.is_dir():
        raise ConfigError(f"corpus root {str(base)!r} is not a directory")
    skipped = _SKIPPED_DIRS if include_tests else _SKIPPED_DIRS | _TEST_DIRS
    files = []
    for path in base.rglob("*.py"):
        rel = path.relative_to(base)
        if path.is_file() and not skipped & set(rel.parts[:-1]):
            files.append(rel.as_posix())
    return sorted(files)


def _stream(base: Path, files: list[str]) -> Tensor:
    """Concatenated ``[SOS, bytes + 3, EOS]`` documents as an int16 tensor."""
    parts = []
    for rel in files:
        data = np.frombuffer((base / rel).read_bytes(), dtype=np.uint8).astype(np.int16) + AR_BYTE_OFFSET
        parts += [np.array([AR_SOS_ID], np.int16), data, np.array([AR_EOS_ID], np.int16)]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int16))


@dataclass(frozen=True)
class TextCorpus:
    """Training and validation token streams ``(T,)`` int16 and the files behind them."""

    train: Tensor
    validation: Tensor
    train_files: tuple[str, ...]
    validation_files: tuple[str, ...]
    root: str


def load_corpus(root: str | Path | None = None, *, include_tests: bool = False) -> TextCorpus:
    """Read and split the corpus (deterministic for a given set of files)."""
    base = Path(root) if root is not None else stdlib_root()
    files = source_files(base, include_tests=include_tests)
    val = [f for f in files if is_validation_file(f)]
    train = [f for f in files if not is_validation_file(f)]
    if not train or not val:
        raise ConfigError(f"corpus at {str(base)!r} has {len(train)} training and {len(val)} validation files: "
                          "the split needs at least one of each")
    return TextCorpus(_stream(base, train), _stream(base, val), tuple(train), tuple(val), str(base))


def check_window(stream: Tensor, context: int, name: str) -> None:
    """``ConfigError`` unless ``context`` is an int >= 2 and the ``name`` stream holds a window of ``context + 1``."""
    check_int("context", context, minimum=2)
    if stream.numel() < context + 1:
        raise ConfigError(f"the {name} stream has {stream.numel()} tokens, fewer than context + 1 = {context + 1}")


class TextWindows(Dataset):
    """Every ``context + 1``-token window of a token stream, item ``i`` starting at token ``i``; a window is cut to
    start at its latest SOS that leaves at least ``min_length + 1`` tokens (then right-padded with PAD).
    Items: ``(window (context + 1,) long, valid length () long)``."""

    def __init__(self, stream: Tensor, *, context: int, min_length: int) -> None:
        check_window(stream, context, "training")
        self.stream, self.width, self.min_length = stream, context + 1, min_length

    def __len__(self) -> int:
        return self.stream.numel() - self.width + 1

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        window = self.stream[i:i + self.width].long()
        index = torch.arange(self.width)
        latest = (window == AR_SOS_ID) & (index <= self.width - (self.min_length + 1))
        cut = int((latest * index).max()) if bool(latest.any()) else 0
        length = self.width - cut
        out = torch.zeros(self.width, dtype=torch.long)
        out[:length] = window[cut:]
        return out, torch.tensor(length)


def validation_windows(stream: Tensor, *, num_windows: int, context: int) -> Tensor:
    """``num_windows`` fixed, evenly spaced full windows ``(K, context + 1)`` of the validation stream."""
    check_window(stream, context, "validation")
    width = context + 1
    last = stream.numel() - width
    k = max(1, num_windows)
    starts = [round(i * last / (k - 1)) if k > 1 else 0 for i in range(k)]
    return torch.stack([stream[s:s + width] for s in starts]).long()


def bits_per_byte(logits: Tensor, targets: Tensor) -> tuple[float, int]:
    """``(sum of NLL in bits, number of predicted bytes)`` over targets that are bytes (ids >= 3).

    ``logits: (..., V)``, ``targets: (...)``; bits per byte = first / second (mean NLL / ln 2).
    """
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none")
    mask = targets.flatten() >= AR_BYTE_OFFSET
    return float(nll[mask].sum()) / math.log(2), int(mask.sum())
