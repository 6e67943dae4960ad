"""Byte-level text corpus: the ``*.py`` source files of the running interpreter's standard library.

Tokens (official Perceiver AR byte vocabulary, reference A.2): PAD 0, EOS 1, SOS 2, byte ``b`` -> ``b + 3``
(259 ids). Each file is one document ``[SOS, bytes..., EOS]``; documents are concatenated in sorted
path order into one training stream and one validation stream.

Split, by file: a file (path relative to the stdlib root, POSIX separators) is in *validation* iff
``int.from_bytes(sha256(path.encode()).digest()[:8], "big") % 10 == 0`` (about 10 % of the files), so
the split never depends on the file list, the machine or the Python hash seed.

Files under ``site-packages``/``dist-packages`` are skipped; so are test suites (any directory named
``test``, ``tests`` or ``idle_test``) unless ``include_tests=True``.

Training draws random windows of ``context + 1`` tokens from the training stream. A window holding a
document start (SOS) that leaves at least ``min_length + 1`` tokens is cut to begin at the last such
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

PAD_ID, EOS_ID, SOS_ID = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET
VALIDATION_MODULUS = 10  # a file is in validation iff its path hash % 10 == 0
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_TEST_DIRS = {"test", "tests", "idle_test"}


def encode(text: str | bytes, *, sos: bool = False, eos: bool = False) -> list[int]:
    """UTF-8 bytes -> ids ``b + 3``, optionally framed by SOS / EOS."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return ([SOS_ID] if sos else []) + [b + BYTE_OFFSET for b in data] + ([EOS_ID] if eos else [])


def decode(ids: list[int] | Tensor) -> str:
    """Ids -> text: special ids (< 3) are dropped, invalid UTF-8 becomes U+FFFD."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return bytes(i - BYTE_OFFSET for i in values if BYTE_OFFSET <= i < VOCAB_SIZE).decode("utf-8", errors="replace")


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
        raise FileNotFoundError(f"corpus root {str(base)!r} is not a directory")
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
        data = np.frombuffer((base / rel).read_bytes(), dtype=np.uint8).astype(np.int16) + BYTE_OFFSET
        parts += [np.array([SOS_ID], np.int16), data, np.array([EOS_ID], np.int16)]
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
        raise ValueError(f"corpus at {str(base)!r} has {len(train)} training and {len(val)} validation files: "
                         "the split needs at least one of each")
    return TextCorpus(_stream(base, train), _stream(base, val), tuple(train), tuple(val), str(base))


def _check_window(stream: Tensor, context: int, name: str) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise ValueError(f"context={context!r} is invalid: expected an int >= 2")
    if stream.numel() < context + 1:
        raise ValueError(f"the {name} stream has {stream.numel()} tokens, fewer than context + 1 = {context + 1}")


def random_windows(stream: Tensor, *, batch_size: int, context: int, min_length: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Training batch: ``(B, context + 1)`` long ids right-padded with PAD and valid lengths ``(B,)``."""
    _check_window(stream, context, "training")
    width = context + 1
    starts = torch.randint(0, stream.numel() - width + 1, (batch_size,), generator=generator)
    windows = torch.stack([stream[s:s + width] for s in starts.tolist()]).long()  # (B, W)
    index = torch.arange(width)
    latest = (windows == SOS_ID) & (index <= width - (min_length + 1))  # SOS leaving >= min_length + 1 tokens
    cut = torch.where(latest.any(dim=1), (latest * index).amax(dim=1), torch.zeros(batch_size, dtype=torch.long))
    shifted = index + cut[:, None]  # (B, W): gather from the cut onwards, pad beyond the window
    lengths = width - cut
    out = windows.gather(1, shifted.clamp(max=width - 1)) * (index < lengths[:, None])
    return out, lengths


def validation_windows(stream: Tensor, *, num_windows: int, context: int) -> Tensor:
    """``num_windows`` fixed, evenly spaced full windows ``(K, context + 1)`` of the validation stream."""
    _check_window(stream, context, "validation")
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
    mask = targets.flatten() >= BYTE_OFFSET
    return float(nll[mask].sum()) / math.log(2), int(mask.sum())
