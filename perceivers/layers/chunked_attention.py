"""Cross-attention inference over long inputs, the keys and values in chunks: memory independent of M.

At M = 16k inputs, batch 32, the cross-attention's buffers are the largest of the model: the key/value
LayerNorm output and the key and value projections, each ``(B, M, C_kv)`` (128 MiB apiece in fp32). Without
autograd nothing needs them all at once: :func:`chunked_cross_attention` normalises and projects
``chunk`` inputs at a time, attends to them with the fused kernel (which also returns each query row's
log-sum-exp of logits) and merges the chunk results exactly (online softmax):

    lse = logaddexp(lse_a, lse_b);  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)

The result equals the unchunked attention up to float rounding (a different summation order). Used by
:class:`~perceivers.layers.blocks.CrossAttentionBlock` when :func:`use_chunked` allows it: CPU, autograd off,
no rotary angles or cache, a key-padding mask or none, more than one chunk of inputs, equal qk and v widths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from perceivers.layers.attention import Attention, autocast_input, check_mask

#: values per chunk buffer (B * Mc * C_kv): 16 MiB in fp32.
CHUNK_ELEMENTS = 1 << 22
#: log-sum-exp of a chunk whose keys are all masked for a row: its weight in the merge is exactly 0.
_NO_KEYS = -1e30


def chunk_length(batch: int, channels: int, chunk_elements: int | None = None) -> int:
    """Inputs per chunk so that one ``(B, Mc, C)`` buffer holds at most ``chunk_elements`` (default
    :data:`CHUNK_ELEMENTS`) values, at least 1."""
    budget = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    return max(1, budget // max(1, batch * channels))


def use_chunked(attn: Attention, x_kv: Tensor, mask: Tensor | None, chunk: int, *, extra_hooks: bool) -> bool:
    """Whether :func:`chunked_cross_attention` serves a call with inputs ``x_kv: (B, M, C)``: CPU, autograd off, no
    other hooks, no ``(B, N, M)`` mask, more than ``chunk`` inputs, and equal query/key and value widths (the
    fused kernel's requirement)."""
    return (x_kv.device.type == "cpu" and not torch.is_grad_enabled() and not extra_hooks
            and (mask is None or mask.dim() == 2) and x_kv.shape[1] > chunk
            and attn.q_proj.out_features == attn.v_proj.out_features)


def chunked_cross_attention(attn: Attention, q_in: Tensor, x_kv: Tensor, kv_norm: Callable[[Tensor], Tensor],
                            mask: Tensor | None, chunk: int) -> Tensor:
    """``attn(q_in, kv_norm(x_kv), mask)`` with ``x_kv: (B, M, C_kv)`` normalised, projected and attended ``chunk``
    inputs at a time; ``q_in: (B, N, C_q)`` (already normalised), ``mask: (B, M)`` bool or None ->
    ``(B, N, C_out)``."""
    b, n, _ = q_in.shape
    m, h = x_kv.shape[1], attn.num_heads
    check_mask(mask, batch=b, num_queries=n, num_keys=m)
    q = attn.q_proj(q_in)
    q = q.view(b, n, h, -1).transpose(1, 2)  # (B, H, N, Dqk)
    scale = q.shape[-1] ** -0.5
    out = lse = None
    for start in range(0, m, chunk):
        kv = autocast_input(kv_norm(x_kv[:, start:start + chunk]))  # one cast for k and v under autocast
        k = attn.k_proj(kv)
        v = attn.v_proj(kv)
        del kv
        mc = k.shape[1]
        k = k.view(b, mc, h, -1).transpose(1, 2)  # (B, H, Mc, Dqk)
        v = v.view(b, mc, h, -1).transpose(1, 2)  # (B, H, Mc, Dv)
        additive, valid = None, None
        if mask is not None:
            keep = mask[:, start:start + chunk]
            valid = keep.any(dim=-1)  # (B,)
            keep = keep | ~valid[:, None]  # a row without keys here attends to all (finite), weighted 0 below
            additive = torch.zeros(b, 1, 1, mc, dtype=q.dtype).masked_fill_(~keep[:, None, None, :], float("-inf"))
        o_c, lse_c = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=additive,
                                                                                scale=scale)
        del k, v
        lse_c = lse_c.unsqueeze(-1)  # (B, H, N, 1) fp32
        if valid is not None:
            lse_c = lse_c.masked_fill(~valid[:, None, None, None], _NO_KEYS)
        if out is None:
            out, lse = o_c.float(), lse_c
            continue
        merged = torch.logaddexp(lse, lse_c)
        out = out.mul_(torch.exp(lse - merged)).add_(o_c.float() * torch.exp(lse_c - merged))
        lse = merged
    out = out.to(q.dtype).transpose(1, 2).reshape(b, n, -1)  # (B, N, H*Dv)
    if mask is not None:
        out = out * mask.any(dim=-1)[:, None, None].to(out.dtype)
    return attn.o_proj(out)
