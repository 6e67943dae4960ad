"""Embedding decoder (official ``io_processors.EmbeddingDecoder``): logits tied to the input embedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EmbeddingDecoder(nn.Module):
    """``logits = h @ E^T + bias`` with the input embedding ``E: (V, C)`` passed in and a bias of its own.

    The module owns only ``bias: (V,)`` (zero init), so the tied matrix keeps its single state-dict key.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def init_weights(self) -> None:
        if not self.bias.is_meta:
            nn.init.zeros_(self.bias)

    def forward(self, h: Tensor, embedding: Tensor) -> Tensor:
        """``h: (B, O, C)``, ``embedding: (V, C)`` -> ``(B, O, V)``."""
        return h @ embedding.t() + self.bias
