"""The cached Perceiver AR decoder shared by sampling and beam search (official ``sample_utils.py``), and the
:class:`GenerationOutput` both return.

Decoding (:class:`CachedDecoder`), with ``S = cache_latents`` latent slots (even) and ``C =
max_context_length`` input slots:

1. *Full pass* over the prompts with ``n = S/2`` latents fills every cache (a prompt shorter than
   ``n`` leaves invalid latent slots, which nothing attends: it behaves as a pass with fewer latents).
2. Each later token is fed alone: its K/V join the cross-attention cache, its latent the latent
   caches, so it attends to every latent cached since the last full pass.
3. When a cache is full (``S`` latent slots, or ``C`` input slots) the caches are reset and a full
   pass over the current sequences with ``n = S/2`` latents refills them (official reset rule: "fill
   half the memory"). A latent therefore sees between ``S/2`` and ``S`` latents (fewer only right
   after a short prompt), as in training with ``N = S`` (default ``S = num_latents``).

The latent schedule depends only on ``S`` and the number of steps, so while no input cache fills
(every sequence shorter than ``C - S/2``) an example's tokens do not depend on the other prompts of
its batch. After that the batch resets together as soon as its widest window is full.

The logits of every step equal an uncached ``model(seq[w:T], num_latents=T - a)[:, -1]`` where
``T`` is the current length, ``a`` the first latent position since the last full pass and ``w`` the
window start (``decoder.latent_start``, ``decoder.window_start``).

Sequences longer than ``C``: a full pass over ``T > C`` tokens keeps the last ``C - S/2`` (a sliding
window whose positions restart at 1, so they stay inside the trained range).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from perceivers.generation.kv_cache import PerceiverARCache


@dataclass
class GenerationOutput:
    """``sequences: (B, T)`` prompt + generated ids, right-padded with ``pad_token_id``; ``lengths: (B,)``;
    ``num_generated: (B,)`` (an EOS is included); ``logits: (B, steps, V)`` the logits each generated
    token was chosen from (``output_logits=True``, not for beam search); ``scores: (B,)`` the
    length-normalised log-probability of the chosen beam (beam search only)."""

    sequences: Tensor
    lengths: Tensor
    num_generated: Tensor
    logits: Tensor | None = None
    scores: Tensor | None = None


class CachedDecoder:
    """Feeds a batch of growing sequences to a Perceiver AR model through a :class:`PerceiverARCache`."""

    def __init__(self, model: Any, prompt: Tensor, lengths: Tensor, *, max_new_tokens: int, cache_latents: int) -> None:
        b, m = prompt.shape
        self.model = model
        self.context = model.config.max_context_length
        self.latent_capacity = cache_latents
        self.tokens = torch.zeros(b, m + max_new_tokens, dtype=torch.long, device=prompt.device)
        self.tokens[:, :m] = prompt.long() * (torch.arange(m, device=prompt.device) < lengths[:, None])
        self.lengths = lengths.clone().long()
        self.cache = PerceiverARCache.for_model(model, batch_size=b, latent_capacity=cache_latents,
                                                device=prompt.device)
        self.window_start = torch.zeros_like(self.lengths)
        self.latent_start = torch.zeros_like(self.lengths)
        self.num_full_passes = 0

    def full_pass(self) -> Tensor:
        """Reset the caches and refill them from the current sequences. ``-> (B, V)`` next-token logits."""
        t, s, c = self.lengths, self.latent_capacity, self.context
        start = torch.where(t > c, t - (c - s // 2), torch.zeros_like(t))  # sliding window beyond C
        window = t - start
        n = s // 2  # windows shorter than n get invalid latents: they count as slots but are never attended
        width = max(int(window.max()), n)
        index = start[:, None] + torch.arange(width, device=t.device)  # (B, W)
        ids = self.tokens.gather(1, index.clamp(max=self.tokens.shape[1] - 1))
        ids = ids * (index < t[:, None])  # right padding
        self.cache.reset()
        logits = self.model(ids, window, num_latents=n, cache=self.cache)[:, -1]
        self.window_start, self.latent_start = start, torch.maximum(start, t - n)
        self.num_full_passes += 1
        return logits

    def append(self, next_tokens: Tensor) -> Tensor:
        """Append ``next_tokens: (B,)`` to every sequence. ``-> (B, V)`` logits for the token after it."""
        rows = torch.arange(self.tokens.shape[0], device=self.tokens.device)
        self.tokens[rows, self.lengths] = next_tokens
        self.lengths = self.lengths + 1
        if self.cache.latents[0].free == 0 or self.cache.cross.free == 0:
            return self.full_pass()
        return self.model(next_tokens[:, None], cache=self.cache)[:, -1]

    def reorder(self, index: Tensor) -> None:
        """Keep/duplicate sequences ``index: (B',)`` (beam search)."""
        self.tokens, self.lengths = self.tokens[index], self.lengths[index]
        self.window_start, self.latent_start = self.window_start[index], self.latent_start[index]
        self.cache.reorder(index)
