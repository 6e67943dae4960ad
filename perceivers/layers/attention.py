"""Multi-head attention on ``scaled_dot_product_attention`` with the official Perceiver semantics.

Shapes: queries ``x_q: (B, N, C_q)``, keys/values ``x_kv: (B, M, C_kv)``; a mask is boolean with
``True`` = attend, either a key-padding mask ``(B, M)`` or a full mask ``(B, N, M)``.

Two optional hooks serve autoregressive models (Perceiver AR): rotary angles for queries and keys
(:mod:`perceivers.layers.rotary`), and a key/value cache (any object with the :class:`KVCacheLayer`
``update`` method, e.g. ``perceivers.generation.kv_cache.LayerKVCache``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.core.validation import check_divisible, check_int
from perceivers.layers.init import init_linear_fan_in
from perceivers.layers.reduced_attention import unfused_attention, use_unfused_attention
from perceivers.layers.rotary import Rotary, apply_rotary


class KVCacheLayer(Protocol):
    """Storage of one attention layer's keys and values across calls.

    ``update(k, v, kv_mask)`` appends the new ``k: (B, H, T, Dqk)`` (rotary already applied) and
    ``v: (B, H, T, Dv)``, with ``kv_mask: (B, T)`` bool marking which new entries later queries may
    attend (``None`` = all), and returns every stored key and value ``(B, H, P+T, D)`` together with
    the validity ``(B, P)`` of the ``P`` entries stored *before* this call, or ``None`` when all of them
    are valid (decoding then runs without a mask).
    """

    def update(self, k: Tensor, v: Tensor, kv_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]: ...


def check_mask(mask: Tensor | None, *, batch: int, num_queries: int, num_keys: int, name: str = "mask") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``mask`` is a bool ``(B, M)`` or ``(B, N, M)`` tensor."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool (True = attend), got {mask.dtype}")
    if tuple(mask.shape) not in ((batch, num_keys), (batch, num_queries, num_keys)):
        raise ValueError(
            f"{name} must have shape (B, M)=({batch}, {num_keys}) or (B, N, M)=({batch}, {num_queries}, "
            f"{num_keys}), got {tuple(mask.shape)}"
        )


_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def autocast_input(x: Tensor) -> Tensor:
    """``x`` in the autocast dtype when autocast is on for its device and ``x`` is float32, else ``x``: the cast that
    autocast applies to a linear layer's input, done once for an input that several projections share (autocast
    caches the casts of weights, not of activations)."""
    device = x.device.type
    if x.dtype == torch.float32 and device in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def _extend_with_cache(
    kv_cache: KVCacheLayer, k: Tensor, v: Tensor, mask: Tensor | None, kv_mask: Tensor | None, *, num_queries: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Store the new ``k, v: (B, H, M, D)`` and return all stored ones with a mask over them: the
    valid past entries, then ``mask`` (default: all) over the new ones; ``(B, P+M)`` unless ``mask``
    is ``(B, N, M)``, then ``(B, N, P+M)``; ``None`` when every past entry is valid and ``mask`` is ``None``."""
    b, _, m, _ = k.shape
    k, v, past_valid = kv_cache.update(k, v, kv_mask)  # (B, H, P+M, D), (B, P) or None
    if past_valid is None:
        if mask is None:
            return k, v, None
        past_valid = mask.new_ones(b, k.shape[2] - m)
    if mask is None or mask.dim() == 2:
        new = mask if mask is not None else past_valid.new_ones(b, m)
        return k, v, torch.cat([past_valid, new], dim=-1)  # (B, P+M)
    return k, v, torch.cat([past_valid[:, None, :].expand(b, num_queries, -1), mask], dim=-1)  # (B, N, P+M)


def sdpa_mask(mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """Boolean keep-mask -> (SDPA mask, row validity) without NaN for rows whose keys are all masked.

    ``(B, M)`` key padding gives a ``(B, 1, 1, M)`` SDPA mask and validity ``(B, 1, 1)`` (never
    expanded to ``(B, N, M)``); ``(B, N, M)`` gives ``(B, 1, N, M)`` and ``(B, N, 1)``. Rows with no
    valid key attend to every key (finite) and the caller multiplies them by their validity, 0.
    """
    if mask is None:
        return None, None
    valid = mask.any(dim=-1, keepdim=True)  # (B, 1) or (B, N, 1)
    keep = mask | ~valid
    if mask.dim() == 2:
        return keep[:, None, None, :], valid[:, :, None]  # (B, 1, 1, M), (B, 1, 1)
    return keep[:, None], valid  # (B, 1, N, M), (B, N, 1)


class Attention(nn.Module):
    """Q/K/V/O linears with bias and independent qk / v widths; heads own contiguous channel slices.
    ``qkv_bias=False`` drops the q/k/v biases (lucidrains' perceiver-pytorch; the output keeps its bias).

    Logits are scaled by ``1/sqrt(qk_channels // num_heads)``. A query row whose keys are all masked
    gets an attention result (value average, before the output projection) of exactly zero, so the
    module returns the output-projection bias there (official ``perceiver.py`` ``attend``); HF
    transformers instead averages uniformly over the masked keys. The ``(B, H, N, M)`` probabilities
    are never materialised here: the fused SDPA kernel computes them.
    """

    def __init__(
        self,
        *,
        q_in_channels: int,
        kv_in_channels: int,
        qk_channels: int,
        v_channels: int,
        output_channels: int,
        num_heads: int = 1,
        dropout_prob: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("q_in_channels", q_in_channels), ("kv_in_channels", kv_in_channels),
                            ("qk_channels", qk_channels), ("v_channels", v_channels),
                            ("output_channels", output_channels), ("num_heads", num_heads)):
            check_int(name, value)
        check_divisible("qk_channels", qk_channels, "num_heads", num_heads)
        check_divisible("v_channels", v_channels, "num_heads", num_heads)
        self.num_heads = num_heads
        self.dropout_prob = dropout_prob
        self.q_proj = nn.Linear(q_in_channels, qk_channels, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_in_channels, qk_channels, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_in_channels, v_channels, bias=qkv_bias)
        self.o_proj = nn.Linear(v_channels, output_channels)

    def init_weights(self) -> None:
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            init_linear_fan_in(linear)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor,
        mask: Tensor | None = None,
        *,
        q_rotary: Rotary | None = None,
        k_rotary: Rotary | None = None,
        kv_cache: KVCacheLayer | None = None,
        kv_mask: Tensor | None = None,
    ) -> Tensor:
        """``x_q: (B, N, C_q)``, ``x_kv: (B, M, C_kv)``, ``mask: (B, M) | (B, N, M)`` bool -> ``(B, N, C_out)``.

        ``q_rotary`` / ``k_rotary``: angles ``(B, N, R)`` / ``(B, M, R)`` rotating the first ``R``
        channels of every query / key head before the logits are scaled by ``1/sqrt(Dqk)``.
        ``kv_cache``: the ``M`` new keys and values are appended to the cache and the queries attend
        to every valid stored entry plus the new ones; ``mask`` then covers only the new keys, and
        ``kv_mask: (B, M)`` marks which new entries later calls may attend (default: all).
        """
        if x_kv is x_q:  # self-attention: one autocast cast for the three projections
            x_q = x_kv = autocast_input(x_q)
        else:  # one cast for the key and value projections
            x_kv = autocast_input(x_kv)
        return self.attend(self.q_proj(x_q), self.k_proj(x_kv), self.v_proj(x_kv), mask, q_rotary=q_rotary,
                           k_rotary=k_rotary, kv_cache=kv_cache, kv_mask=kv_mask)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        *,
        q_rotary: Rotary | None = None,
        k_rotary: Rotary | None = None,
        kv_cache: KVCacheLayer | None = None,
        kv_mask: Tensor | None = None,
    ) -> Tensor:
        """Everything after the input projections: ``q: (B, N, C_qk)``, ``k: (B, M, C_qk)``, ``v: (B, M, C_v)``
        (already projected) -> ``(B, N, C_out)``; the other arguments as in :meth:`forward`."""
        b, n, _ = q.shape
        m = k.shape[1]
        check_mask(mask, batch=b, num_queries=n, num_keys=m)
        if kv_mask is not None and kv_cache is None:
            raise ValueError("kv_mask marks entries stored in a cache: it needs kv_cache")
        h = self.num_heads
        q = q.view(b, n, h, -1).transpose(1, 2)  # (B, H, N, Dqk)
        k = k.view(b, m, h, -1).transpose(1, 2)  # (B, H, M, Dqk)
        v = v.view(b, m, h, -1).transpose(1, 2)  # (B, H, M, Dv)
        if q_rotary is not None:
            q = apply_rotary(q, q_rotary)
        if k_rotary is not None:
            k = apply_rotary(k, k_rotary)
        if kv_cache is not None:
            k, v, mask = _extend_with_cache(kv_cache, k, v, mask, kv_mask, num_queries=n)
        attn_mask, row_valid = sdpa_mask(mask)
        dropout = self.dropout_prob if self.training else 0.0
        if use_unfused_attention(q, k, v, dropout):  # bf16 / fp16 training on CPU: faster than the fused backward
            out = unfused_attention(q, k, v, attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, n, -1)  # (B, N, H*Dv)
        if row_valid is not None:
            out = out * row_valid.to(out.dtype)
        return self.o_proj(out)
