"""Byte-level masked language modelling data: windows of the standard-library corpus of :mod:`perceivers.data.text`
(same files, same split by path hash) as :class:`~perceivers.tokenizers.BytesTokenizer` ids, and word masking.

Ids: byte ``b`` -> ``b + 6`` (the official tokenizer); a document's start and end (the text stream's SOS / EOS)
become ``[BOS]`` / ``[EOS]``. Masking follows the Perceiver IO paper (§4.1, App. F.3): each whitespace-delimited
word (a maximal run of bytes other than space, tab, newline, CR, FF, VT) is masked with probability ``mask_prob``
(0.15), every byte of a masked word then becoming ``[MASK]``; the loss and the accuracy are over the masked bytes.
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


def mlm_ids(ar_ids: Tensor) -> Tensor:
    """Text-stream ids (:mod:`perceivers.data.text`: byte + 3, SOS 2, EOS 1) -> ``BytesTokenizer`` ids (long)."""
    ids = ar_ids.long() - AR_BYTE_OFFSET + NUM_SPECIAL
    ids = torch.where(ar_ids == AR_SOS_ID, BOS_ID, ids)
    return torch.where(ar_ids == AR_EOS_ID, EOS_ID, ids)


def word_mask(ids: Tensor, mask_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Boolean ``(B, L)`` mask of the bytes of whole words of ``ids (B, L)``, each word drawn with ``mask_prob``.

    A word is a maximal run of byte ids (>= 6) that are not whitespace; special ids and whitespace are never
    masked. Words cut by a window's edge count as words. Draws one uniform number per position from
    ``generator`` (default: the global RNG)."""
    space = torch.tensor([b + NUM_SPECIAL for b in WHITESPACE], device=ids.device)
    in_word = (ids >= NUM_SPECIAL) & ~torch.isin(ids, space)  # (B, L)
    starts = in_word & ~torch.nn.functional.pad(in_word[:, :-1], (1, 0), value=False)
    word_index = torch.cumsum(starts.long(), dim=1)  # (B, L): 1.. for each word, by order of start
    draws = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device) < mask_prob  # one per word slot
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


def evaluation_batch(stream: Tensor, *, num_windows: int, length: int, mask_prob: float,
                     seed: int) -> tuple[Tensor, Tensor]:
    """``num_windows`` evenly spaced windows ``(K, length)`` of ``stream`` and their fixed word mask (from
    ``seed``): the held-out set of the masked-byte accuracy."""
    check_window(stream, length - 1, "validation")
    last = stream.numel() - length
    k = max(1, num_windows)
    starts = [round(i * last / (k - 1)) if k > 1 else 0 for i in range(k)]
    ids = torch.stack([mlm_ids(stream[s:s + length]) for s in starts])
    return ids, word_mask(ids, mask_prob, torch.Generator().manual_seed(seed))
