"""Fixed-size key/value caches for Perceiver AR decoding.

Layout: each attention layer owns one :class:`LayerKVCache` with buffers ``k: (B, H, S, Dqk)``,
``v: (B, H, S, Dv)`` and ``valid: (B, S)``, allocated on the first write. Every call appends its
entries at the same slot for the whole batch (slots ``[length, length + T)``), so a right-padded
prompt leaves invalid slots (``valid`` False) in the shorter examples instead of shifting anything.
Keys are stored *after* rotary: a key's rotation depends only on its own position, so this equals the
official cache (which stores pre-rotary keys with their positions and rotates at attention time).

A :class:`PerceiverARCache` holds the cross-attention cache (one slot per input token, capacity
``context_capacity``), one cache per self-attention layer (one slot per latent, capacity
``latent_capacity``), and ``num_tokens``: the real tokens stored so far per example, which gives
the positions of the next ones. When a cache is full it is not rolled: the decoder in
:mod:`perceivers.generation.generate` resets it and refills it with a full forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerKVCache:
    """One attention layer's keys and values (the ``KVCacheLayer`` protocol of ``perceivers.layers.attention``)."""

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} is invalid: expected an int >= 1")
        self.capacity = capacity
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.valid: Tensor | None = None
        # No stored entry is invalid: attention needs no mask over them, and ``valid`` is not written (a decode
        # step writes keys and values only); it is filled in when the first invalid entry arrives.
        self.all_valid = True

    @property
    def free(self) -> int:
        return self.capacity - self.length

    def update(self, k: Tensor, v: Tensor, kv_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Append ``k: (B, H, T, Dqk)``, ``v: (B, H, T, Dv)`` and their validity ``kv_mask: (B, T)``;
        return every stored ``k, v`` ``(B, H, P+T, D)`` and the validity ``(B, P)`` of the earlier entries
        (``None`` when every one of them is valid)."""
        b, h, t, _ = k.shape
        if t > self.free:
            raise ValueError(f"KV cache overflow: {t} new entries but only {self.free} of {self.capacity} slots "
                             f"free; reset the cache (a full forward pass refills it)")
        if self.k is None:
            self.k = k.new_zeros(b, h, self.capacity, k.shape[-1])
            self.v = v.new_zeros(b, h, self.capacity, v.shape[-1])
            self.valid = torch.zeros(b, self.capacity, dtype=torch.bool, device=k.device)
        assert self.v is not None and self.valid is not None
        if (self.k.shape[0], self.k.shape[1]) != (b, h):
            raise ValueError(f"KV cache holds batch {self.k.shape[0]} x {self.k.shape[1]} heads, got {b} x {h}")
        p, end = self.length, self.length + t
        self.k[:, :, p:end] = k
        self.v[:, :, p:end] = v
        past_valid = None if self.all_valid else self.valid[:, :p]
        if kv_mask is not None:
            if self.all_valid:
                self.valid[:, :p] = True  # not written while every entry was valid
            self.valid[:, p:end] = kv_mask
            self.all_valid = self.all_valid and bool(kv_mask.all())
        elif not self.all_valid:
            self.valid[:, p:end] = True
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end], past_valid

    def reset(self) -> None:
        """Forget every entry (the buffers are kept and overwritten)."""
        self.length = 0
        self.all_valid = True
        if self.valid is not None:
            self.valid.zero_()

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search): ``index: (B',)`` into the current batch."""
        if self.k is not None:
            self.k, self.v, self.valid = self.k[index], self.v[index], self.valid[index]  # type: ignore[index]


class PerceiverARCache:
    """Caches of every attention layer of a Perceiver AR model for a batch of ``batch_size`` sequences.

    Pass it as ``model(input_ids, lengths, cache=cache)``: the first call (empty cache) is a full
    forward pass that fills it, later calls feed the next tokens only.
    """

    def __init__(self, *, batch_size: int, num_layers: int, context_capacity: int, latent_capacity: int,
                 device: torch.device | str | None = None) -> None:
        for name, value in (("batch_size", batch_size), ("num_layers", num_layers),
                            ("context_capacity", context_capacity), ("latent_capacity", latent_capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1")
        self.cross = LayerKVCache(context_capacity)
        self.latents = [LayerKVCache(latent_capacity) for _ in range(num_layers)]
        self.num_tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_num_tokens = 0  # num_tokens.max() on the host, so that a decode step needs no device sync

    @classmethod
    def for_model(cls, model, *, batch_size: int, latent_capacity: int | None = None,
                  context_capacity: int | None = None, device=None) -> PerceiverARCache:
        """A cache sized for ``model`` (defaults: ``max_context_length`` inputs, ``num_latents`` latents)."""
        c = model.config
        return cls(batch_size=batch_size, num_layers=c.num_self_attend_layers,
                   context_capacity=c.max_context_length if context_capacity is None else context_capacity,
                   latent_capacity=c.num_latents if latent_capacity is None else latent_capacity, device=device)

    @property
    def layers(self) -> list[LayerKVCache]:
        return [self.cross, *self.latents]

    @property
    def is_empty(self) -> bool:
        return self.max_num_tokens == 0

    def advance(self, lengths: Tensor, longest: int) -> None:
        """Called by the model after a forward pass that stored ``lengths: (B,)`` real tokens, ``longest`` =
        ``max(lengths)`` (known to the model on the host)."""
        self.num_tokens = self.num_tokens + lengths.to(self.num_tokens.device)
        self.max_num_tokens += longest

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.num_tokens = torch.zeros_like(self.num_tokens)
        self.max_num_tokens = 0

    def reorder(self, index: Tensor) -> None:
        """Keep/duplicate batch rows ``index: (B',)`` (beam search; reads the new longest row on the host)."""
        for layer in self.layers:
            layer.reorder(index)
        self.num_tokens = self.num_tokens[index]
        self.max_num_tokens = int(self.num_tokens.max()) if self.num_tokens.numel() else 0
