"""HiP building blocks on grouped tensors ``(B, G, N, C)``: grouping, regrouping and the HiP block.

Attention runs independently inside each group: the group axis is folded into the batch before
our SDPA ``Attention`` blocks, so groups never interact inside a block (official
``perceiver_blocks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.layers.blocks import CrossAttentionBlock, SelfAttentionBlock
from perceivers.layers.init import (
    init_linear_fan_in,
    init_variance_scaling,
)


def init_table_fan_in(table: Tensor) -> None:
    """Official ``TrainablePositionEncoding`` init: VarianceScaling(1.0) with fan-in = ``table.shape[0]``."""
    init_variance_scaling(table, table.shape[0])


def fold(x: Tensor) -> Tensor:
    """``(B, G, N, C) -> (B*G, N, C)``: groups become batch entries."""
    b, g, n, c = x.shape
    return x.reshape(b * g, n, c)


def unfold(x: Tensor, groups: int) -> Tensor:
    """``(B*G, N, C) -> (B, G, N, C)``."""
    bg, n, c = x.shape
    return x.view(bg // groups, groups, n, c)


def regroup(x: Tensor, num_groups: int, regroup_type: str = "reshape") -> Tensor:
    """``(B, G, N, C) -> (B, G', G*N/G', C)``.

    ``reshape`` merges consecutive groups (row-major); ``transpose_reshape`` swaps the G and N axes
    first, so every new group mixes tokens of all old groups.
    """
    b, g, n, c = x.shape
    if (g * n) % num_groups:
        raise ValueError(f"cannot regroup {g} groups x {n} latents into {num_groups} groups: {g * n} is not "
                         f"divisible by {num_groups}")
    if regroup_type == "transpose_reshape":
        x = x.transpose(1, 2)  # (B, N, G, C)
    elif regroup_type != "reshape":
        raise ValueError(f"regroup_type must be 'reshape' or 'transpose_reshape', got {regroup_type!r}")
    return x.reshape(b, num_groups, g * n // num_groups, c)  # (B, G', G*N/G', C)


@dataclass(frozen=True)
class ModalityGroups:
    """Where one modality lives in the grouped tensor: groups ``[start, start + num_groups)``."""

    name: str
    length: int
    start: int
    num_groups: int
    final_padding: int  # tokens appended so that length + final_padding divides into num_groups
    group_padding: int  # tokens appended to each group up to tokens_per_group


@dataclass(frozen=True)
class GroupPlan:
    """Result of :func:`plan_groups`: the modalities' layouts and the common group length."""

    modalities: tuple[ModalityGroups, ...]
    tokens_per_group: int
    concatenated: bool = False  # ConcatenateGrouper (Perceiver IO): one group, modalities along the index axis

    @property
    def num_groups(self) -> int:
        return sum(m.num_groups for m in self.modalities)


def assign_groups(lengths: dict[str, int], num_groups: int) -> dict[str, int]:
    """Official ``assign_groups_to_modalities``: one group per modality, then each remaining group to
    the modality with the most tokens per group (ties: the first in order). Exact integer comparisons."""
    if len(lengths) > num_groups:
        raise ValueError(f"cannot group {len(lengths)} modalities ({', '.join(lengths)}) into {num_groups} groups: "
                         "every modality needs at least one group")
    counts = dict.fromkeys(lengths, 1)
    for _ in range(num_groups - len(lengths)):
        best = None
        for name in lengths:  # a/b > c/d  <=>  a*d > c*b; strict, so ties keep the first
            if best is None or lengths[name] * counts[best] > lengths[best] * counts[name]:
                best = name
        counts[best] += 1
    return counts


def plan_groups(lengths: dict[str, int], num_groups: int) -> GroupPlan:
    """Official ``ConstNumGrouper`` bookkeeping for modalities of the given lengths (dict order)."""
    counts = assign_groups(lengths, num_groups)
    tokens = max(-(-lengths[m] // counts[m]) for m in lengths)  # ceil of the largest tokens per group
    mods, start = [], 0
    for name, length in lengths.items():
        g = counts[name]
        final = -length % g
        mods.append(ModalityGroups(name, length, start, g, final, tokens - (length + final) // g))
        start += g
    return GroupPlan(tuple(mods), tokens)


def plan_concatenate(lengths: dict[str, int]) -> GroupPlan:
    """Official ``ConcatenateGrouper`` (Perceiver IO baselines): all modalities in one group, in order."""
    return GroupPlan(tuple(ModalityGroups(m, n, 0, 1, 0, 0) for m, n in lengths.items()), sum(lengths.values()),
                     concatenated=True)


def group(plan: GroupPlan, inputs: dict[str, Tensor]) -> Tensor:
    """``{m: (B, M_m, C)}`` -> ``(B, G, T, C)``: per modality pad the end, split into its groups, pad
    each group to ``T`` tokens (zeros, never masked), then concatenate modalities on the group axis."""
    if plan.concatenated:
        return torch.cat([inputs[m.name] for m in plan.modalities], dim=1).unsqueeze(1)  # (B, 1, sum M, C)
    parts = []
    for m in plan.modalities:
        x = F.pad(inputs[m.name], (0, 0, 0, m.final_padding))  # (B, M + final, C)
        b, _, c = x.shape
        x = x.view(b, m.num_groups, -1, c)  # (B, G_m, (M + final)/G_m, C)
        parts.append(F.pad(x, (0, 0, 0, m.group_padding)))  # (B, G_m, T, C)
    return torch.cat(parts, dim=1)


def ungroup(plan: GroupPlan, x: Tensor) -> dict[str, Tensor]:
    """``(B, G, N, C)`` -> ``{m: (B, L_m, C)}``: per modality take its groups, drop ``group_padding``
    rows from the end of each group, flatten, drop ``final_padding``. With ``N = T`` this inverts
    :func:`group`; for latents (``N != T``) the lengths are bookkeeping artefacts, as officially.
    A concatenated plan splits the single group's index axis by the modality lengths instead."""
    b, _, n, c = x.shape
    out = {}
    if plan.concatenated:  # split the index axis by the modality lengths (latents: truncated to N)
        start = 0
        for m in plan.modalities:
            out[m.name] = x[:, 0, start:start + m.length]
            start += m.length
        return out
    for m in plan.modalities:
        keep = max(n - m.group_padding, 0)
        y = x[:, m.start:m.start + m.num_groups, :keep].reshape(b, -1, c)  # (B, G_m * keep, C)
        out[m.name] = y[:, :max(y.shape[1] - m.final_padding, 0)]
    return out


def drop_path_keep(batch_size: int, num_groups: int, rate: float, like: Tensor) -> Tensor:
    """Official ``StochasticDepth`` mask: per example 0 with probability ``rate``, else 1 (not rescaled),
    repeated over the example's groups -> ``(B*G, 1, 1)`` for folded ``(B*G, N, D)`` tensors."""
    keep = torch.floor(1.0 - rate + torch.rand(batch_size, 1, 1, dtype=like.dtype, device=like.device))
    return keep.repeat_interleave(num_groups, dim=0)


def self_attend_drop_path(layer: SelfAttentionBlock, z: Tensor, rate: float, batch_size: int) -> Tensor:
    """``SelfAttentionBlock`` with stochastic depth on both residual branches (independent draws), as the
    official ``SelfAttention``: ``z += keep * Attn(LN z)``, ``z += keep' * MLP(LN z)``. ``z: (B*G, N, D)``."""
    groups = z.shape[0] // batch_size
    h = layer.attention_norm(z)
    z = z + drop_path_keep(batch_size, groups, rate, z) * layer.attention_dropout(layer.attention(h, h))
    return z + drop_path_keep(batch_size, groups, rate, z) * layer.mlp(layer.mlp_norm(z))


class HiPBlock(nn.Module):
    """Official ``PerceiverBlock``: [regroup], cross-attention from learned per-group latents, self-attention.

    ``latents: (G*N, D)`` are reshaped group-major to ``(G, N, D)``. The cross-attention takes its
    qk/v widths from the input (``in_channels``) and ends in a widening-1 squared-ReLU MLP; the
    optional U-Net ``skip`` (``skip_channels`` wide, projected by a biased Linear when that differs
    from D) is added to the latents before the query LayerNorm, so it is part of the post-attention
    residual. ``num_latents_train`` < ``num_latents`` takes a random subset of each group's latents
    in training mode. ``drop_path_rate`` > 0 drops each self-attention residual branch (attention and
    MLP separately) per example in training, without rescaling (official ``StochasticDepth``).
    """

    def __init__(
        self, *, in_channels: int, channels: int, num_groups: int, num_latents: int, num_self_attend_layers: int,
        num_self_attend_heads: int, num_cross_attend_heads: int = 1, self_attend_widening_factor: int = 4,
        cross_attend_widening_factor: int = 1, regroup_inputs: bool = True, regroup_type: str = "reshape",
        skip_channels: int | None = None, num_latents_train: int | None = None, dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate!r} is invalid: expected a float in [0, 1)")
        self.drop_path_rate = drop_path_rate
        self.num_groups, self.num_latents = num_groups, num_latents
        self.num_latents_train = num_latents_train
        self.regroup_inputs, self.regroup_type = regroup_inputs, regroup_type
        self.latents = nn.Parameter(torch.empty(num_groups * num_latents, channels))
        self.skip_proj = nn.Linear(skip_channels, channels) if skip_channels not in (None, channels) else None
        self.cross_attend = CrossAttentionBlock(
            q_channels=channels, kv_channels=in_channels, num_heads=num_cross_attend_heads, shape_for_attn="kv",
            widening_factor=cross_attend_widening_factor, use_query_residual=True, dropout_prob=dropout_prob,
            activation="sq_relu")
        self.self_attends = nn.ModuleList(
            SelfAttentionBlock(channels=channels, num_heads=num_self_attend_heads,
                               widening_factor=self_attend_widening_factor, dropout_prob=dropout_prob,
                               activation="sq_relu")
            for _ in range(num_self_attend_layers))

    def init_weights(self) -> None:
        init_table_fan_in(self.latents)
        if self.skip_proj is not None:
            init_linear_fan_in(self.skip_proj)
        self.cross_attend.init_weights()
        for layer in self.self_attends:
            layer.init_weights()

    def queries(self, batch_size: int) -> Tensor:
        """Learned latents ``(B, G, N, D)``; in training with ``num_latents_train`` a random subset per
        (example, group) of ``N_train`` of them."""
        g, n = self.num_groups, self.num_latents
        q = self.latents.view(g, n, -1).unsqueeze(0).expand(batch_size, -1, -1, -1)  # (B, G, N, D)
        if self.training and self.num_latents_train is not None and self.num_latents_train < n:
            keep = torch.rand(batch_size, g, n, device=q.device).argsort(dim=-1)[..., :self.num_latents_train]
            q = torch.gather(q, 2, keep[..., None].expand(-1, -1, -1, q.shape[-1]))  # (B, G, N_train, D)
        return q

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``x: (B, G_in, M, C_in)``, ``skip: (B, G, N, C_skip)`` -> ``(B, G, N, D)``."""
        if self.regroup_inputs:
            x = regroup(x, self.num_groups, self.regroup_type)  # (B, G, G_in*M/G, C_in)
        elif x.shape[1] != self.num_groups:
            raise ValueError(f"block expects {self.num_groups} input groups, got {x.shape[1]}")
        q = self.queries(x.shape[0])
        if skip is not None:
            q = q + (self.skip_proj(skip) if self.skip_proj is not None else skip)
        z = self.cross_attend(fold(q), fold(x))  # (B*G, N, D)
        for layer in self.self_attends:
            if self.training and self.drop_path_rate > 0:
                z = self_attend_drop_path(layer, z, self.drop_path_rate, x.shape[0])
            else:
                z = layer(z)
        return unfold(z, self.num_groups)


class ReconstructionHead(nn.Module):
    """Official ``ReconstructionHead``: grouped cross-attention (1 head, widening 1, no query residual)
    from position queries ``(B, G, T, E)`` to latents ``(B, G, N, D)`` -> ``(B, G, T, E)``."""

    def __init__(self, *, query_channels: int, latent_channels: int) -> None:
        super().__init__()
        self.cross_attend = CrossAttentionBlock(
            q_channels=query_channels, kv_channels=latent_channels, num_heads=1, shape_for_attn="kv",
            widening_factor=1, use_query_residual=False, activation="sq_relu")

    def init_weights(self) -> None:
        self.cross_attend.init_weights()

    def forward(self, queries: Tensor, latents: Tensor) -> Tensor:
        if queries.shape[1] != latents.shape[1]:
            raise ValueError(f"reconstruction queries have {queries.shape[1]} groups but the latents "
                             f"{latents.shape[1]}")
        return unfold(self.cross_attend(fold(queries), fold(latents)), queries.shape[1])
