"""Byte-level Perceiver IO: text preprocessor -> encoder -> MLM (tied embedding) or classification decoder.

Any length ``L <= max_seq_len`` is accepted (the official colab requires exactly 2,048): the encoder
masks padded keys, and the MLM decoder uses the first ``L`` of its ``max_seq_len`` learned queries.
Because every decoder query attends to the latents independently, this equals decoding the padded
2,048-long input and keeping the first ``L`` outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perceivers.models.perceiver_io.model import PerceiverIO


class PerceiverIOLanguage(PerceiverIO, preprocessor="text"):
    """Token ids ``(B, L)`` -> MLM logits ``(B, L, vocab_size)`` or class logits ``(B, num_outputs)``.

    Built by ``PerceiverIO(config)`` for a config with a ``text`` preprocessor. ``input_mask: (B, L)`` bool
    (True = real token) masks padded keys in the encoder and, for MLM, is also the decoder query mask (official
    colab: ``query_mask=input_mask``): a padded output position gets an attention result of exactly zero. HF
    transformers ignores the decoder query mask, so its padded positions differ; real positions agree.
    """

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward``: ``input_ids: (B, max_seq_len)`` random ids and
        ``input_mask`` with the last example one token shorter (right padding)."""
        p, device = self.config.preprocessor, self.encoder.latents.device
        ids = torch.randint(0, p.vocab_size, (batch_size, p.max_seq_len), generator=generator)
        mask = torch.ones(batch_size, p.max_seq_len, dtype=torch.bool)
        mask[-1, -1] = p.max_seq_len == 1  # one padded position, unless that leaves none
        return {"input_ids": ids.to(device), "input_mask": mask.to(device)}

    def forward_features(self, input_ids: Tensor, input_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Encode: ``input_ids: (B, L)``, ``input_mask: (B, L)`` -> latents ``(B, N, D)``."""
        tokens, _ = self.preprocessor(input_ids)  # (B, L, C)
        self.check_input_mask(input_mask, tokens, "(B, L)")
        return self.encoder(tokens, input_mask)

    def forward_head(self, z: Tensor, input_mask: Tensor | None = None, *, length: int | None = None) -> Tensor:
        """Decode latents ``z: (B, N, D)``: MLM logits for the first ``length`` positions, or class logits."""
        if self.embedding_decoder is None:
            return self.decoder(z)
        length = length if length is not None else input_mask.shape[1]
        query = self.decoder.query_pos(z.shape[0])[:, :length]  # (B, L, C): the first L learned queries
        h = self.decoder(z, query=query, query_mask=input_mask)  # (B, L, C)
        return self.embedding_decoder(h, self.preprocessor.embedding.weight)

    def forward(self, input_ids: Tensor, input_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``input_ids: (B, L)`` int, ``input_mask: (B, L)`` bool -> ``(B, L, V)`` (MLM) or ``(B, K)``."""
        z = self.forward_features(input_ids, input_mask)
        return self.forward_head(z, input_mask, length=input_ids.shape[1])
