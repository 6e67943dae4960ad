"""Perceiver encoder (:class:`PerceiverEncoder`) and its config (:class:`EncoderConfig`): learned latents,
cross-attend(s) to the input, a shared latent self-attention stack."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_divisible,
    check_int,
    check_optional_int,
    check_prob,
    check_scale,
    fail,
)
from perceivers.layers.blocks import CrossAttentionBlock, SelfAttentionBlock
from perceivers.layers.init import init_trunc_normal

#: Weight-sharing schedules across blocks (see :class:`EncoderConfig`).
SHARING = ("all", "all_but_first", "none")


def sharing_schedule(sharing: str, num_blocks: int) -> list[int]:
    """Module index per block: ``'all'`` -> ``[0, 0, ...]``, ``'all_but_first'`` -> ``[0, 1, 1, ...]``,
    ``'none'`` -> ``[0, 1, 2, ...]``."""
    if sharing == "all":
        return [0] * num_blocks
    if sharing == "all_but_first":
        return [0] + [1] * (num_blocks - 1)
    return list(range(num_blocks))


@dataclass(frozen=True, kw_only=True)
class EncoderConfig(ConfigBase):
    """Perceiver encoder: latents, cross-attend(s) and a latent self-attention stack.

    ``layout='io'`` (Perceiver IO): one cross-attend, then the stack of ``num_self_attends_per_block``
    layers applied ``num_blocks`` times with shared weights. ``layout='interleaved'`` (original
    Perceiver): a cross-attend before every block; the first cross-attend has its own weights and
    cross-attends 2..``num_blocks`` share one module (Perceiver paper Tab. 7).

    Options for the other PyTorch ports (defaults = the official model): ``cross_attend_sharing`` (interleaved
    layout) and ``self_attend_sharing`` say which blocks share weights: ``'all'`` (one module for every
    block), ``'all_but_first'`` (block 0 its own, blocks 1.. one shared) or ``'none'`` (one per block);
    ``cross_attend_qk_channels`` / ``cross_attend_v_channels`` give the cross-attention its own widths
    (default: ``qk_channels`` / ``v_channels`` as officially); ``qkv_bias=False`` drops the q/k/v biases;
    ``num_cross_attends`` (interleaved layout) cross-attends before the first that many blocks only (default
    ``None``: every block; krasserm's ``num_cross_attention_layers``).
    """

    num_latents: int = 512
    num_latent_channels: int = 1024
    num_blocks: int = 8
    num_self_attends_per_block: int = 6
    num_cross_attend_heads: int = 1
    num_self_attend_heads: int = 8
    cross_attend_widening_factor: int = 1
    self_attend_widening_factor: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    cross_attention_shape_for_attn: str = "kv"
    use_query_residual: bool = True
    dropout_prob: float = 0.0
    attention_dropout_prob: float = 0.0
    latent_init_scale: float = 0.02
    layout: str = "io"
    cross_attend_qk_channels: int | None = None
    cross_attend_v_channels: int | None = None
    cross_attend_sharing: str = "all_but_first"
    self_attend_sharing: str = "all"
    qkv_bias: bool = True
    num_cross_attends: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_latents", "num_latent_channels", "num_blocks", "num_self_attends_per_block",
                     "num_cross_attend_heads", "num_self_attend_heads", "cross_attend_widening_factor",
                     "self_attend_widening_factor"):
            check_int(name, getattr(self, name))
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        check_choice("cross_attention_shape_for_attn", self.cross_attention_shape_for_attn, ("kv", "q"))
        check_choice("layout", self.layout, ("io", "interleaved"))
        check_prob("dropout_prob", self.dropout_prob)
        check_prob("attention_dropout_prob", self.attention_dropout_prob)
        check_scale("latent_init_scale", self.latent_init_scale)
        check_bools(self, "use_query_residual", "qkv_bias")
        check_optional_int("cross_attend_qk_channels", self.cross_attend_qk_channels)
        check_optional_int("cross_attend_v_channels", self.cross_attend_v_channels)
        check_choice("cross_attend_sharing", self.cross_attend_sharing, SHARING)
        check_choice("self_attend_sharing", self.self_attend_sharing, SHARING)
        check_optional_int("num_cross_attends", self.num_cross_attends)
        if self.num_cross_attends is not None and (self.layout != "interleaved"
                                                   or self.num_cross_attends > self.num_blocks):
            fail("num_cross_attends", self.num_cross_attends, f"None, or with layout='interleaved' an int <= "
                 f"num_blocks={self.num_blocks}")
        self_qk = self.qk_channels or self.num_latent_channels
        check_divisible("self-attention qk_channels", self_qk, "num_self_attend_heads", self.num_self_attend_heads)
        check_divisible("self-attention v_channels", self.v_channels or self_qk, "num_self_attend_heads",
                         self.num_self_attend_heads)

    def cross_attention_channels(self, input_channels: int) -> tuple[int, int]:
        """(qk, v) widths of the encoder cross-attention for inputs of ``input_channels``."""
        qk = self.cross_attend_qk_channels or self.qk_channels
        if qk is None:
            qk = input_channels if self.cross_attention_shape_for_attn == "kv" else self.num_latent_channels
        return qk, self.cross_attend_v_channels or self.v_channels or qk

    def cross_attend_schedule(self) -> list[int]:
        """The cross-attend module used before each block (``-1``: none)."""
        if self.layout == "io":
            return [0] + [-1] * (self.num_blocks - 1)
        crosses = self.num_blocks if self.num_cross_attends is None else self.num_cross_attends
        return sharing_schedule(self.cross_attend_sharing, crosses) + [-1] * (self.num_blocks - crosses)

    def self_attend_schedule(self) -> list[int]:
        """The self-attention stack used by each block."""
        return sharing_schedule(self.self_attend_sharing, self.num_blocks)

    def debug_size(self) -> EncoderConfig:
        """The same structure (layout, weight-sharing schedule, options) at test size: at most 8 latents of 16
        channels, 2 blocks of at most 2 self-attention layers, at most 2 heads (one cross-attention head when its
        width follows the unknown input width), explicit qk / v widths 8 / 16."""
        qk = None if self.qk_channels is None else 8
        cross_heads = min(self.num_cross_attend_heads, 2)
        if qk is None and self.cross_attend_qk_channels is None and self.cross_attention_shape_for_attn == "kv":
            cross_heads = 1
        blocks, crosses = min(self.num_blocks, 2), self.num_cross_attends
        if crosses is not None:  # fewer cross-attends than blocks stays fewer
            crosses = blocks if crosses >= self.num_blocks else max(1, min(crosses, blocks - 1))
        return self.replace(num_latents=min(self.num_latents, 8), num_latent_channels=16,
                            num_blocks=blocks, num_cross_attends=crosses,
                            num_self_attends_per_block=min(self.num_self_attends_per_block, 2),
                            num_cross_attend_heads=cross_heads,
                            num_self_attend_heads=min(self.num_self_attend_heads, 2),
                            qk_channels=qk, v_channels=None if self.v_channels is None else 16,
                            cross_attend_qk_channels=None if self.cross_attend_qk_channels is None else 8,
                            cross_attend_v_channels=None if self.cross_attend_v_channels is None else 16)

    def check_cross_attention_heads(self, input_channels: int) -> None:
        """``ValueError`` unless the cross-attention widths for inputs of ``input_channels`` divide by its heads."""
        qk, v = self.cross_attention_channels(input_channels)
        heads = self.num_cross_attend_heads
        check_divisible("encoder cross-attention qk_channels", qk, "num_cross_attend_heads", heads)
        check_divisible("encoder cross-attention v_channels", v, "num_cross_attend_heads", heads)


class PerceiverEncoder(nn.Module):
    """Maps inputs ``(B, M, C)`` to latents ``(B, N, D)``.

    Weight sharing is a set of unique modules plus an index schedule, so every tensor has exactly
    one state-dict key: ``self_attends`` (``num_self_attends_per_block`` layers) is applied
    ``num_blocks`` times; ``cross_attends`` holds one module (``layout='io'``) or two
    (``layout='interleaved'``: the first cross-attend, and the one shared by cross-attends 2..n).
    ``cross_attend_schedule[i]`` is the cross-attend module used before block ``i`` (or ``-1``).
    With other sharing options (:class:`EncoderConfig`) ``cross_attends`` holds one module per distinct
    schedule entry and ``self_attends`` one stack per distinct ``self_attend_schedule`` entry, stack ``s``
    being ``self_attends[s * num_self_attends_per_block : (s + 1) * num_self_attends_per_block]``.
    """

    def __init__(self, config: EncoderConfig, *, input_channels: int, activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.config = config
        c = config
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.num_latent_channels))
        init_trunc_normal(self.latents, c.latent_init_scale)  # usable on its own; a no-op on meta
        self.cross_attend_schedule = c.cross_attend_schedule()
        self.self_attend_schedule = c.self_attend_schedule()
        cross_qk, cross_v = c.cross_attention_channels(input_channels)
        self.cross_attends = nn.ModuleList(
            CrossAttentionBlock(
                q_channels=c.num_latent_channels, kv_channels=input_channels, num_heads=c.num_cross_attend_heads,
                qk_channels=cross_qk, v_channels=cross_v, shape_for_attn=c.cross_attention_shape_for_attn,
                widening_factor=c.cross_attend_widening_factor, use_query_residual=c.use_query_residual,
                dropout_prob=c.dropout_prob, attention_dropout_prob=c.attention_dropout_prob, activation=activation,
                qkv_bias=c.qkv_bias,
            )
            for _ in range(max(self.cross_attend_schedule) + 1)
        )
        self.self_attends = nn.ModuleList(
            SelfAttentionBlock(
                channels=c.num_latent_channels, num_heads=c.num_self_attend_heads, qk_channels=c.qk_channels,
                v_channels=c.v_channels, widening_factor=c.self_attend_widening_factor, dropout_prob=c.dropout_prob,
                attention_dropout_prob=c.attention_dropout_prob, activation=activation, qkv_bias=c.qkv_bias,
            )
            for _ in range(c.num_self_attends_per_block * (max(self.self_attend_schedule) + 1))
        )

    def init_weights(self) -> None:
        init_trunc_normal(self.latents, self.config.latent_init_scale)
        for block in (*self.cross_attends, *self.self_attends):
            block.init_weights()

    def forward(self, inputs: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """``inputs: (B, M, C)``, ``input_mask: (B, M)`` bool (True = real token) -> ``(B, N, D)``."""
        z = self.latents.unsqueeze(0).expand(inputs.shape[0], -1, -1)  # (B, N, D)
        per_block = self.config.num_self_attends_per_block
        for cross_index, stack in zip(self.cross_attend_schedule, self.self_attend_schedule, strict=True):
            if cross_index >= 0:
                z = self.cross_attends[cross_index](z, inputs, input_mask)
            for layer in self.self_attends[stack * per_block:(stack + 1) * per_block]:
                z = layer(z)
        return z
