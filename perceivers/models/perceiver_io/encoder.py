"""Perceiver encoder: learned latents, cross-attend(s) to the input, shared latent self-attention stack."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceivers.layers.blocks import CrossAttentionBlock, SelfAttentionBlock
from perceivers.layers.init import init_trunc_normal
from perceivers.models.perceiver_io.config import EncoderConfig


class PerceiverEncoder(nn.Module):
    """Maps inputs ``(B, M, C)`` to latents ``(B, N, D)``.

    Weight sharing is a set of unique modules plus an index schedule, so every tensor has exactly
    one state-dict key: ``self_attends`` (``num_self_attends_per_block`` layers) is applied
    ``num_blocks`` times; ``cross_attends`` holds one module (``layout='io'``) or two
    (``layout='interleaved'``: the first cross-attend, and the one shared by cross-attends 2..n).
    ``cross_attend_schedule[i]`` is the cross-attend module used before block ``i`` (or ``-1``).
    """

    def __init__(self, config: EncoderConfig, *, input_channels: int, activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.config = config
        c = config
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.num_latent_channels))
        init_trunc_normal(self.latents, c.latent_init_scale)  # usable on its own; a no-op on meta
        num_cross = 1 if c.layout == "io" or c.num_blocks == 1 else 2
        self.cross_attends = nn.ModuleList(
            CrossAttentionBlock(
                q_channels=c.num_latent_channels, kv_channels=input_channels, num_heads=c.num_cross_attend_heads,
                qk_channels=c.qk_channels, v_channels=c.v_channels, shape_for_attn=c.cross_attention_shape_for_attn,
                widening_factor=c.cross_attend_widening_factor, use_query_residual=c.use_query_residual,
                dropout_prob=c.dropout_prob, attention_dropout_prob=c.attention_dropout_prob, activation=activation,
            )
            for _ in range(num_cross)
        )
        self.self_attends = nn.ModuleList(
            SelfAttentionBlock(
                channels=c.num_latent_channels, num_heads=c.num_self_attend_heads, qk_channels=c.qk_channels,
                v_channels=c.v_channels, widening_factor=c.self_attend_widening_factor, dropout_prob=c.dropout_prob,
                attention_dropout_prob=c.attention_dropout_prob, activation=activation,
            )
            for _ in range(c.num_self_attends_per_block)
        )
        if c.layout == "io":
            self.cross_attend_schedule = [0] + [-1] * (c.num_blocks - 1)
        else:
            self.cross_attend_schedule = [0] + [1] * (c.num_blocks - 1)

    def init_weights(self) -> None:
        init_trunc_normal(self.latents, self.config.latent_init_scale)
        for block in (*self.cross_attends, *self.self_attends):
            block.init_weights()

    def forward(self, inputs: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """``inputs: (B, M, C)``, ``input_mask: (B, M)`` bool (True = real token) -> ``(B, N, D)``."""
        z = self.latents.unsqueeze(0).expand(inputs.shape[0], -1, -1)  # (B, N, D)
        for cross_index in self.cross_attend_schedule:
            if cross_index >= 0:
                z = self.cross_attends[cross_index](z, inputs, input_mask)
            for layer in self.self_attends:
                z = layer(z)
        return z
