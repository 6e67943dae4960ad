"""The official synthetic copy task (``RandomMirroredDataset`` of the Perceiver AR release). Synthetic data.

A sequence of ``S`` tokens (``S`` even) is ``[SOS, x_1 .. x_k, x_k .. x_1, EOS]`` with ``k = (S - 2) / 2``
uniformly random bytes (ids ``3 .. 258``: :class:`perceivers.tokenizers.ARBytesTokenizer`). Only the
second, mirrored half is predictable: its token ``x_j`` sits ``2 (k - j) + 1`` positions after its
source, so the last copies reach back to the start of the sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from perceivers.core.validation import check_int, fail
from perceivers.tokenizers import AR_BYTE_OFFSET, AR_EOS_ID, AR_SOS_ID, AR_VOCAB_SIZE


def check_length(length: object) -> int:
    """``length`` as an int, or ``ValueError`` unless it is an even int >= 4."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 4 or length % 2:
        fail("length", length, "an even int >= 4 (SOS, k bytes, k mirrored, EOS)")
    return length


def mirrored_sequences(batch: int, length: int, generator: torch.Generator | None = None) -> Tensor:
    """``(batch, length)`` long copy-task sequences drawn from ``generator``."""
    k = (check_length(length) - 2) // 2
    x = torch.randint(AR_BYTE_OFFSET, AR_VOCAB_SIZE, (batch, k), generator=generator)
    sos, eos = torch.full((batch, 1), AR_SOS_ID), torch.full((batch, 1), AR_EOS_ID)
    return torch.cat([sos, x, x.flip(1), eos], dim=1)


class MirroredSequences(Dataset):
    """``size`` copy-task sequences generated on demand: item ``i`` is a pure function of ``(seed, i)``, so any
    data order (and a resumed run) sees the same sequences. Items: ``(length,)`` long.

    Each item draws from its own ``torch.Generator`` with an *even* seed; evaluation streams (e.g. the copy
    recipe's) use odd seeds, so training and evaluation never replay the same random stream."""

    def __init__(self, *, size: int, length: int, seed: int = 0) -> None:
        check_int("size", size)
        self.size, self.length, self.seed = size, check_length(length), seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} sequences")
        g = torch.Generator().manual_seed(2 * ((self.seed * 1_000_003 + i) % 2**62))
        return mirrored_sequences(1, self.length, g)[0]


def copy_positions(length: int, num_latents: int) -> tuple[Tensor, Tensor]:
    """Which of the ``num_latents`` predictions (latent ``i`` predicts sequence index ``length - N + i``)
    are copies (the mirrored half) and which are the farthest quarter of them (sources within the first
    ``k // 4`` bytes). ``-> (copy (N,), far (N,))`` bool."""
    k = (check_length(length) - 2) // 2
    t = torch.arange(length - num_latents, length)
    copy = (t >= k + 1) & (t <= 2 * k)
    return copy, copy & (t > 2 * k - k // 4)
