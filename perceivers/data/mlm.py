"""Byte-level masked language modelling data: windows of the standard-library corpus of :mod:`perceivers.data.text`
(same files, same split by path hash) as :class:`~perceivers.tokenizers.BytesTokenizer` ids, and word masking.

Ids: byte ``b`` -> ``b + 6`` (the official tokenizer); a document's start and end (the text stream's SOS / EOS)
become ``[BOS]`` / ``[EOS]``. Three masking schemes (:data:`MASKINGS`, chosen by :func:`draw_mask`); each masks
only word bytes (never whitespace -- space, tab, newline, CR, FF, VT -- nor a special id), each masked byte becoming
``[MASK]``; the loss and the accuracy are over the masked bytes:

- ``words``: the Perceiver IO paper's (§4.1, App. F.3): each whitespace-delimited word (a maximal run of word
  bytes) is masked with probability ``mask_prob``, all its bytes then;
- ``spans``: runs of ``span_length`` consecutive positions start with probability ``mask_prob / span_length``
  (about ``mask_prob`` of the bytes masked, in short runs that may cut words);
- ``bytes``: each word byte is masked alone with probability ``mask_prob`` (BERT's token masking, on bytes).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from perceivers.data.text import check_window
from perceivers.tokenizers import (
    AR_BYTE_OFFSET,
    AR_EOS_ID,
    AR_SOS_ID,
    BOS_ID,
    EOS_ID,
    MASK_ID,
    NUM_SPECIAL,
)

#: The bytes that separate words (Python's ``bytes.split()`` whitespace).
WHITESPACE = tuple(b" \t\n\r\x0b\x0c")

#: The masking schemes of :func:`draw_mask` (see the module docstring).
MASKINGS = ("bytes", "spans", "words")


def mlm_ids(ar_ids: Tensor) -> Tensor:
    """Text-stream ids (:mod:`perceivers.data.text`: byte + 3, SOS 2, EOS 1) -> ``BytesTokenizer`` ids (long)."""
    ids = ar_ids.long() - AR_BYTE_OFFSET + NUM_SPECIAL
    ids = torch.where(ar_ids == AR_SOS_ID, BOS_ID, ids)
    return torch.where(ar_ids == AR_EOS_ID, EOS_ID, ids)


def word_bytes(ids: Tensor) -> Tensor:
    """Boolean ``(B, L)``: the positions of ``ids (B, L)`` that hold a byte other than whitespace."""
    space = torch.tensor([b + NUM_SPECIAL for b in WHITESPACE], device=ids.device)
    return (ids >= NUM_SPECIAL) & ~torch.isin(ids, space)


def uniform(ids: Tensor, generator: torch.Generator | None) -> Tensor:
    """One uniform draw per position of ``ids``, from ``generator`` (default: the global RNG) on the CPU."""
    return torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)


def byte_mask(ids: Tensor, mask_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Boolean ``(B, L)`` mask: each word byte of ``ids (B, L)`` drawn alone with ``mask_prob``."""
    return word_bytes(ids) & (uniform(ids, generator) < mask_prob)


def span_mask(ids: Tensor, mask_prob: float, generator: torch.Generator | None = None, *,
              span_length: int = 3) -> Tensor:
    """Boolean ``(B, L)`` mask: runs of ``span_length`` positions of ``ids (B, L)``, each position starting one
    with probability ``mask_prob / span_length``; whitespace and special ids inside a run stay unmasked."""
    starts = (uniform(ids, generator) < mask_prob / span_length).float()  # (B, L)
    covered = torch.nn.functional.max_pool1d(torch.nn.functional.pad(starts, (span_length - 1, 0)).unsqueeze(1),
                                             span_length, stride=1).squeeze(1) > 0  # a start in [i - k + 1, i]
    return word_bytes(ids) & covered


def draw_mask(ids: Tensor, masking: str, mask_prob: float, generator: torch.Generator | None = None, *,
              span_length: int = 3) -> Tensor:
    """Boolean ``(B, L)`` mask of ``ids (B, L)`` by the scheme ``masking`` (one of :data:`MASKINGS`)."""
    if masking == "words":
        return word_mask(ids, mask_prob, generator)
    if masking == "spans":
        return span_mask(ids, mask_prob, generator, span_length=span_length)
    if masking == "bytes":
        return byte_mask(ids, mask_prob, generator)
    raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")


def word_mask(ids: Tensor, mask_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Boolean ``(B, L)`` mask of the bytes of whole words of ``ids (B, L)``, each word drawn with ``mask_prob``.

    A word is a maximal run of byte ids (>= 6) that are not whitespace; special ids and whitespace are never
    masked. Words cut by a window's edge count as words. Draws one uniform number per position from
    ``generator`` (default: the global RNG)."""
    in_word = word_bytes(ids)  # (B, L)
    starts = in_word & ~torch.nn.functional.pad(in_word[:, :-1], (1, 0), value=False)
    word_index = torch.cumsum(starts.long(), dim=1)  # (B, L): 1.. for each word, by order of start
    draws = uniform(ids, generator) < mask_prob  # one per word slot
    chosen = torch.gather(draws, 1, (word_index - 1).clamp(min=0))  # (B, L): the draw of the word's index
    return in_word & chosen


def apply_mask(ids: Tensor, mask: Tensor) -> Tensor:
    """``ids`` with the masked positions replaced by ``[MASK]``."""
    return torch.where(mask, torch.full_like(ids, MASK_ID), ids)


class MLMWindows(Dataset):
    """Every ``length``-byte window of a text stream (item ``i`` starts at token ``i``) as ``BytesTokenizer`` ids
    ``(length,)`` long; masking is drawn per step by the task."""

    def __init__(self, stream: Tensor, *, length: int) -> None:
        check_window(stream, length - 1, "training")
        self.stream, self.length = stream, length

    def __len__(self) -> int:
        return self.stream.numel() - self.length + 1

    def __getitem__(self, i: int) -> Tensor:
        return mlm_ids(self.stream[i:i + self.length])


def evaluation_batch(stream: Tensor, *, num_windows: int, length: int, mask_prob: float, seed: int,
                     masking: str = "words", span_length: int = 3) -> tuple[Tensor, Tensor]:
    """``num_windows`` evenly spaced windows ``(K, length)`` of ``stream`` and their fixed mask by ``masking``
    (drawn from ``seed``): the held-out set of the masked-byte accuracy."""
    check_window(stream, length - 1, "validation")
    last = stream.numel() - length
    k = max(1, num_windows)
    starts = [round(i * last / (k - 1)) if k > 1 else 0 for i in range(k)]
    ids = torch.stack([mlm_ids(stream[s:s + length]) for s in starts])
    return ids, draw_mask(ids, masking, mask_prob, torch.Generator().manual_seed(seed), span_length=span_length)
