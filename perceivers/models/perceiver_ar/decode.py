"""The one-token cached decode step of :class:`~perceivers.models.perceiver_ar.model.PerceiverAR`.

It computes what the general cached forward pass computes for ``T = 1`` new token per example (every new token a
latent, nothing masked among the new entries), in about a third of the operator calls: a decode step is one row
per example, so its time is weight reads plus per-operator overhead, and the general path spends ~1,400 operator
calls (views, head transposes, rotary on ``(B, H, T, R)`` slices, ``cat``, dropout in eval mode) on it.

- Activations stay 2-D ``(B, C)`` rows; heads are views of them (``T = 1``: no transpose).
- The query/key/value projections of a layer are one matmul when the decode weight layout
  (``perceivers.generation.layout``) has fused them into a ``block`` (duck-typed: this module does not import
  the generation package), else three, concatenated.
- Rotary: per step, one set of angles per projection layout (``[q | k | v]`` rows of the self-attentions, the
  cross-attention's ``q`` and ``[k | v]``) with angle 0 on every channel that is not rotated, applied as
  ``x * cos + x[swap] * signed_sin`` on the whole row (a pass-through channel gets ``x * 1 + y * 0``);
  the rotated channels see the same float operations as :func:`perceivers.layers.rotary.apply_rotary`.
- Keys and values go through the cache layer's ``update`` (written in place into its preallocated buffers).

The result equals the general path up to float summation order (the tests compare both with uncached passes). It
reads the blocks' parameters directly, so forward hooks registered on the blocks or their linears do not run in a
one-token step (they do in the prompt pass and for chunks of several tokens).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.layers.blocks import activation_fn
from perceivers.layers.rotary import RotaryEmbedding, rotary_wavelengths


class RowRotary:
    """Per-channel inverse wavelengths ``(W,)`` (0 where nothing rotates), signs and the pair swap of a row layout
    made of parts ``(width, rotary or None)``; :meth:`angles` gives ``cos, signed_sin: (B, W)`` for positions."""

    def __init__(self, parts: list[tuple[int, RotaryEmbedding | None]], device: torch.device) -> None:
        inverse, sign, swap, offset = [], [], [], 0
        for width, rotary in parts:
            inv, sgn, idx = torch.zeros(width), torch.ones(width), torch.arange(width)
            if rotary is not None:
                d, r = rotary.head_dim, rotary.num_channels
                head_inv = (1.0 / rotary_wavelengths(r, rotary.max_wavelength)).repeat_interleave(2)
                pair = torch.arange(r).view(-1, 2).flip(-1).flatten()  # (2k+1, 2k)
                for h in range(width // d):
                    inv[h * d:h * d + r] = head_inv
                    sgn[h * d:h * d + r:2] = -1.0
                    idx[h * d:h * d + r] = h * d + pair
            inverse.append(inv)
            sign.append(sgn)
            swap.append(idx + offset)
            offset += width
        self.inverse = torch.cat(inverse).to(device)
        self.sign = torch.cat(sign).to(device)
        self.swap = torch.cat(swap).to(device)

    def angles(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions: (B, 1)`` float32 -> ``cos, signed_sin: (B, W)`` computed in float32, given in ``dtype``."""
        angles = positions * self.inverse
        cos, signed_sin = angles.cos(), angles.sin() * self.sign
        if dtype != torch.float32:
            cos, signed_sin = cos.to(dtype), signed_sin.to(dtype)
        return cos, signed_sin

    def apply(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        """Rotate the rows ``x: (B, W)`` (``cos``, ``signed_sin`` in the dtype of ``x``)."""
        return x * cos + x.index_select(1, self.swap) * signed_sin


def _matvec(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` of rows ``x: (B, K)``; one reduced-precision CPU row goes through ``addmv``, which PyTorch runs
    1.6-1.9x faster than ``linear`` for bf16 (measured at the bench shapes; float32 is as fast either way)."""
    if x.shape[0] == 1 and x.dtype != torch.float32 and x.device.type == "cpu":
        out = torch.mv(weight, x[0]) if bias is None else torch.addmv(bias, weight, x[0])
        return out[None]
    return F.linear(x, weight, bias)


def _linear(x: Tensor, module: nn.Linear) -> Tensor:
    return _matvec(x, module.weight, module.bias)


def _norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _widths(attention: nn.Module) -> list[int]:
    return [attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features]


def _project_kv(attention: Any, x: Tensor) -> Tensor:
    """``[k | v]`` rows of ``x: (B, C_in)`` (one matmul with the fused decode ``block`` when there is one)."""
    block = getattr(attention, "block", None)
    if block is None:
        return torch.cat([_linear(x, attention.k_proj), _linear(x, attention.v_proj)], dim=-1)
    if attention.with_query:
        nq = attention.sizes[0]
        return _matvec(x, block[nq:], attention.bias[nq:])
    return _matvec(x, block, attention.bias)


def _project_qkv(attention: Any, x: Tensor) -> Tensor:
    """``[q | k | v]`` rows of ``x: (B, C_in)`` for a self-attention."""
    block = getattr(attention, "block", None)
    if block is not None and attention.with_query:
        return _matvec(x, block, attention.bias)
    return torch.cat([_linear(x, attention.q_proj), _project_kv(attention, x)], dim=-1)


def _attend(attention: Any, q: Tensor, kv: Tensor, cache_layer: Any) -> Tensor:
    """``q: (B, Cqk)``, ``kv: (B, Cqk + Cv)`` rows (rotated) -> the output projection ``(B, C_out)``; the new key
    and value are stored in ``cache_layer`` and the query attends to every valid stored entry."""
    b, h, cqk = q.shape[0], attention.num_heads, q.shape[1]
    k, v = kv[:, :cqk].view(b, h, 1, -1), kv[:, cqk:].view(b, h, 1, -1)
    k, v, past_valid = cache_layer.update(k, v, None)
    mask = None
    if past_valid is not None:  # invalid slots in the history (padded prompts): mask them
        mask = torch.cat([past_valid, past_valid.new_ones(b, 1)], dim=-1)[:, None, None]
    out = F.scaled_dot_product_attention(q.view(b, h, 1, -1), k, v, attn_mask=mask)  # (B, H, 1, Dv)
    return _linear(out.view(b, -1), attention.o_proj)


def _mlp(block: nn.Module, x: Tensor) -> Tensor:
    mlp = block.mlp
    return _linear(activation_fn(mlp.activation, _linear(_norm(x, block.mlp_norm), mlp.fc1)), mlp.fc2)


class DecodeStep:
    """The decode step of one model on one device (rotary layouts built once)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.self_rotary = self.cross_q_rotary = self.cross_kv_rotary = None
        if model.cross_rotary is not None:
            zq, zk, zv = _widths(model.self_attends[0].attention) if len(model.self_attends) else (0, 0, 0)
            xq, xk, xv = _widths(model.cross_attend.attention)
            self.self_rotary = RowRotary([(zq, model.self_rotary), (zk, model.self_rotary), (zv, None)], device)
            self.cross_q_rotary = RowRotary([(xq, model.cross_rotary)], device)
            self.cross_kv_rotary = RowRotary([(xk, model.cross_rotary), (xv, None)], device)

    def __call__(self, model: nn.Module, input_ids: Tensor, cache: Any) -> Tensor:
        """``input_ids: (B, 1)`` next tokens of every example -> logits ``(B, 1, V)``; advances ``cache``."""
        b = input_ids.shape[0]
        index = cache.num_tokens.to(input_ids.device)[:, None]  # (B, 1) 0-based
        if model.config.position_grid is None:
            positions = index + 1
        else:
            positions = model.token_positions(index, torch.ones_like(index, dtype=torch.bool))
        x = model.embed(input_ids, positions).view(b, -1)  # (B, C)
        z = _linear(x, model.query_proj)
        cross, attention = model.cross_attend, model.cross_attend.attention
        q, kv = _linear(_norm(z, cross.q_norm), attention.q_proj), _project_kv(attention, _norm(x, cross.kv_norm))
        if self.cross_q_rotary is not None:
            pos = positions.to(torch.float32)
            q = self.cross_q_rotary.apply(q, *self.cross_q_rotary.angles(pos, q.dtype))
            kv = self.cross_kv_rotary.apply(kv, *self.cross_kv_rotary.angles(pos, kv.dtype))
            rot = self.self_rotary.angles(pos, z.dtype)
        z = z + _attend(attention, q, kv, cache.cross)  # query residual
        z = z + _mlp(cross, z)
        for layer, cache_layer in zip(model.self_attends, cache.latents):
            attention = layer.attention
            qkv = _project_qkv(attention, _norm(z, layer.attention_norm))
            if self.self_rotary is not None:
                qkv = self.self_rotary.apply(qkv, *rot)
            nq = attention.q_proj.out_features
            z = z + _attend(attention, qkv[:, :nq], qkv[:, nq:], cache_layer)
            z = z + _mlp(layer, z)
        cache.advance(torch.ones_like(cache.num_tokens), 1)
        return _linear(_norm(z, model.final_norm), model.logits)[:, None]
