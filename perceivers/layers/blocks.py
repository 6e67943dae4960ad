"""MLP, cross-attention and self-attention blocks (official ``perceiver.py`` semantics).

All blocks are pre-LayerNorm (eps 1e-5, as Haiku). Shapes: queries ``(B, N, C_q)``, keys/values
``(B, M, C_kv)``; every block returns ``(B, N, C_q)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.core.validation import check_choice, check_int
from perceivers.layers.attention import Attention, KVCacheLayer
from perceivers.layers.chunked_attention import (
    chunk_length,
    chunked_cross_attention,
    use_chunked,
)
from perceivers.layers.init import init_linear_fan_in
from perceivers.layers.rotary import Rotary

Activation = Literal["gelu_tanh", "gelu", "sq_relu", "relu", "geglu"]
ACTIVATIONS: tuple[str, ...] = ("gelu_tanh", "gelu", "sq_relu", "relu", "geglu")
LAYER_NORM_EPS = 1e-5


def activation_fn(name: str, x: Tensor, *, inplace: bool = False) -> Tensor:
    """Apply the named activation: tanh-approximated GELU (official default), exact GELU (HF
    transformers' ``"gelu"``), squared ReLU (Perceiver AR / HiP), ReLU, or GEGLU (lucidrains'
    perceiver-pytorch: ``x: (..., 2F)`` -> ``a * gelu(g)`` with ``a, g = x.chunk(2)``, exact GELU, ``(..., F)``).

    ``inplace=True`` (inference only: no autograd) overwrites ``x`` with the same values, saving a second buffer of
    the MLP's widest activation; GEGLU, half as wide an output, is always computed out of place."""
    if name == "gelu_tanh":
        return torch.ops.aten.gelu_(x, approximate="tanh") if inplace else F.gelu(x, approximate="tanh")
    if name == "gelu":
        return torch.ops.aten.gelu_(x) if inplace else F.gelu(x)
    if name == "sq_relu":
        return x.relu_().square_() if inplace else F.relu(x).square()
    if name == "relu":
        return x.relu_() if inplace else F.relu(x)
    if name == "geglu":
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


#: Without autograd, an MLP whose hidden activation would hold more than this many values runs over chunks of rows
#: whose hidden activation holds at most this many (16 MiB in float32).
MLP_CHUNK_VALUES = 1 << 22


def _hooked(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class MLP(nn.Module):
    """``Linear(C -> widening*C)`` -> activation -> ``Linear(-> C)`` -> dropout. ``(..., C) -> (..., C)``.

    With ``activation='geglu'`` the first linear is twice as wide (``C -> 2*widening*C``: values, then gates).

    Without autograd (and without active dropout or hooks on ``fc1``/``fc2``), an input whose hidden activation
    would exceed :data:`MLP_CHUNK_VALUES` values runs over chunks of rows, the activation in place: the same result
    up to float rounding, with one chunk's hidden buffer (e.g. 16 MiB instead of 64 at batch 32 x 256 latents x
    2,048) that stays below glibc's largest ``mmap`` threshold (32 MiB), so it is reused from call to call instead
    of being mapped and page-faulted afresh each time.
    """

    def __init__(
        self, channels: int, *, widening_factor: int = 1, activation: str = "gelu_tanh", dropout_prob: float = 0.0
    ) -> None:
        super().__init__()
        check_int("channels", channels)
        check_int("widening_factor", widening_factor)
        check_choice("activation", activation, ACTIVATIONS)
        self.activation = activation
        gated = 2 if activation == "geglu" else 1
        self.fc1 = nn.Linear(channels, gated * widening_factor * channels)
        self.fc2 = nn.Linear(widening_factor * channels, channels)
        self.dropout = nn.Dropout(dropout_prob)

    def init_weights(self) -> None:
        init_linear_fan_in(self.fc1)
        init_linear_fan_in(self.fc2)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (..., C)`` -> ``(..., C)``."""
        width = self.fc1.out_features
        rows = x.numel() // max(1, x.shape[-1])
        chunk = max(1, MLP_CHUNK_VALUES // width)
        autograd = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if (rows <= chunk or autograd or (self.training and self.dropout.p > 0)
                or _hooked(self.fc1, self.fc2, self.dropout)):
            h = self.fc1(x)
            h = activation_fn(self.activation, h, inplace=not h.requires_grad)
            return self.dropout(self.fc2(h))
        flat = x.reshape(rows, x.shape[-1])
        out = [self.fc2(activation_fn(self.activation, self.fc1(part), inplace=True)) for part in flat.split(chunk)]
        return torch.cat(out).view(*x.shape[:-1], self.fc2.out_features)


class CrossAttentionBlock(nn.Module):
    """``x = [x_q +] Attn(LN_q(x_q), LN_kv(x_kv)); x = x + MLP(LN(x))`` (official ``CrossAttention``).

    Args:
        q_channels, kv_channels: widths of the query and key/value inputs.
        qk_channels: query/key width; ``None`` takes it from the kv input (``shape_for_attn='kv'``,
            used by every released model) or from the query (``'q'``).
        v_channels: value width, default ``qk_channels``. The output width is always ``q_channels``.
        use_query_residual: add the *un-normalised* query to the attention output.
        qkv_bias: biases on the q/k/v projections (``False``: lucidrains' perceiver-pytorch).
        use_mlp: the ``x + MLP(LN(x))`` half; ``False`` returns the attention (+ residual) alone (the
            decoder of lucidrains' ``PerceiverIO`` without ``decoder_ff``): no ``mlp_norm`` / ``mlp`` parameters.
    """

    def __init__(
        self,
        *,
        q_channels: int,
        kv_channels: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        shape_for_attn: Literal["kv", "q"] = "kv",
        widening_factor: int = 1,
        use_query_residual: bool = True,
        dropout_prob: float = 0.0,
        attention_dropout_prob: float = 0.0,
        activation: str = "gelu_tanh",
        qkv_bias: bool = True,
        use_mlp: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("q_channels", q_channels), ("kv_channels", kv_channels), ("num_heads", num_heads)):
            check_int(name, value)
        check_choice("shape_for_attn", shape_for_attn, ("kv", "q"))
        if qk_channels is None:
            qk_channels = kv_channels if shape_for_attn == "kv" else q_channels
        if v_channels is None:
            v_channels = qk_channels
        self.use_query_residual = use_query_residual
        self.q_norm = nn.LayerNorm(q_channels, eps=LAYER_NORM_EPS)
        self.kv_norm = nn.LayerNorm(kv_channels, eps=LAYER_NORM_EPS)
        self.attention = Attention(
            q_in_channels=q_channels,
            kv_in_channels=kv_channels,
            qk_channels=qk_channels,
            v_channels=v_channels,
            output_channels=q_channels,
            num_heads=num_heads,
            dropout_prob=attention_dropout_prob,
            qkv_bias=qkv_bias,
        )
        self.attention_dropout = nn.Dropout(dropout_prob)
        self.mlp_norm = nn.LayerNorm(q_channels, eps=LAYER_NORM_EPS) if use_mlp else None
        self.mlp = MLP(q_channels, widening_factor=widening_factor, activation=activation,
                       dropout_prob=dropout_prob) if use_mlp else None

    def init_weights(self) -> None:
        for norm in (self.q_norm, self.kv_norm, self.mlp_norm):
            if norm is not None:
                norm.reset_parameters()
        self.attention.init_weights()
        if self.mlp is not None:
            self.mlp.init_weights()

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
        """``x_q: (B, N, C_q)``, ``x_kv: (B, M, C_kv)``, ``mask: (B, M) | (B, N, M)`` -> ``(B, N, C_q)``.

        The keyword-only rotary and cache hooks are passed to :meth:`Attention.forward`. Without autograd, long
        inputs are normalised, projected and attended in chunks (:mod:`perceivers.layers.chunked_attention`): the
        same result up to float rounding, without the ``(B, M, C_kv)`` buffers of every input at once.
        """
        chunk = chunk_length(x_kv.shape[0], x_kv.shape[-1])
        hooks = any(hook is not None for hook in (q_rotary, k_rotary, kv_cache, kv_mask)) or (
            self.training and self.attention.dropout_prob > 0)
        if use_chunked(self.attention, x_kv, mask, chunk, extra_hooks=hooks):
            attn = chunked_cross_attention(self.attention, self.q_norm(x_q), x_kv, self.kv_norm, mask, chunk)
        else:
            attn = self.attention(self.q_norm(x_q), self.kv_norm(x_kv), mask, q_rotary=q_rotary, k_rotary=k_rotary,
                                  kv_cache=kv_cache, kv_mask=kv_mask)
        attn = self.attention_dropout(attn)
        x = x_q + attn if self.use_query_residual else attn
        return x + self.mlp(self.mlp_norm(x)) if self.mlp is not None else x


class SelfAttentionBlock(nn.Module):
    """``x = x + Attn(LN(x)); x = x + MLP(LN(x))`` (official ``SelfAttention``). ``(B, N, C) -> (B, N, C)``."""

    def __init__(
        self,
        *,
        channels: int,
        num_heads: int = 8,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        dropout_prob: float = 0.0,
        attention_dropout_prob: float = 0.0,
        activation: str = "gelu_tanh",
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        check_int("channels", channels)
        check_int("num_heads", num_heads)
        qk_channels = channels if qk_channels is None else qk_channels
        v_channels = qk_channels if v_channels is None else v_channels
        self.attention_norm = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.attention = Attention(
            q_in_channels=channels,
            kv_in_channels=channels,
            qk_channels=qk_channels,
            v_channels=v_channels,
            output_channels=channels,
            num_heads=num_heads,
            dropout_prob=attention_dropout_prob,
            qkv_bias=qkv_bias,
        )
        self.attention_dropout = nn.Dropout(dropout_prob)
        self.mlp_norm = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.mlp = MLP(channels, widening_factor=widening_factor, activation=activation, dropout_prob=dropout_prob)

    def init_weights(self) -> None:
        self.attention_norm.reset_parameters()
        self.mlp_norm.reset_parameters()
        self.attention.init_weights()
        self.mlp.init_weights()

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        rotary: Rotary | None = None,
        kv_cache: KVCacheLayer | None = None,
        kv_mask: Tensor | None = None,
    ) -> Tensor:
        """``x: (B, N, C)``, optional ``mask: (B, N) | (B, N, N)`` -> ``(B, N, C)``.

        ``rotary: (B, N, R)`` angles rotate both queries and keys; the cache hooks are passed to
        :meth:`Attention.forward` (with a cache, ``mask`` covers only the new entries).
        """
        h = self.attention_norm(x)
        attn = self.attention(h, h, mask, q_rotary=rotary, k_rotary=rotary, kv_cache=kv_cache, kv_mask=kv_mask)
        x = x + self.attention_dropout(attn)
        return x + self.mlp(self.mlp_norm(x))
