"""Hierarchical Perceiver (HiP, official ``perceiver.py`` ``HiP`` and ``HiPClassBottleneck``).

``inputs: {modality: (B, M_m, C_m)}`` -> per-modality Linear embedding to ``C_emb`` + learned
position table -> ``ConstNumGrouper`` into ``num_groups[0]`` groups -> encoder blocks -> processor
(1 group) -> decoder blocks with U-Net skips from the mirrored encoder blocks -> reconstruction head
queried by the position encodings -> ungroup -> zero-initialised per-modality unembedding.

**Modality order.** Group assignment (ties go to the first modality), the concatenation of groups
and the position projection used by each modality (slot ``i`` for the ``i``-th modality of the
call) follow the *insertion order of the input dict* of each call, as the official code run
eagerly. ``jax.jit`` sorts dict keys, so to match jitted official runs set
``sort_modalities=True`` (or pass the dict sorted by name).

**Perceiver IO baselines.** With a single block (``num_groups=(1,)``) the model is the HiP
repository's "slightly improved" Perceiver IO: all modalities concatenated into one group
(``ConcatenateGrouper``), one block, the same reconstruction head and unembedders.

**Class bottleneck.** With ``label_modalities`` (official ``HiPClassBottleneck``) the labels skip the
encoder: each is embedded to the processor's input width, gets its own position table (no
projection) and is concatenated after the regrouped latents as extra processor keys/values. A
shared head reconstructs the labels from the processor output; the output lists the non-label
modalities first, then the labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from perceivers.layers.init import init_linear_fan_in, init_trunc_normal, init_zeros
from perceivers.models.base import PerceiverModel, check_input_dtype
from perceivers.models.hip.blocks import (
    GroupPlan,
    HiPBlock,
    ReconstructionHead,
    group,
    init_table_fan_in,
    plan_concatenate,
    plan_groups,
    regroup,
    ungroup,
)
from perceivers.models.hip.config import HiPConfig


def build_block(c: HiPConfig, i: int) -> HiPBlock:
    """Block ``i`` of a HiP with config ``c`` (encoder, processor or decoder, with its skip width)."""
    k, mid = len(c.num_groups), c.processor_index
    return HiPBlock(
        in_channels=c.num_embedding_channels if i == 0 else c.num_channels[i - 1], channels=c.num_channels[i],
        num_groups=c.num_groups[i], num_latents=c.num_latents[i], num_self_attend_layers=c.num_self_attend_layers[i],
        num_self_attend_heads=c.num_self_attend_heads[i], num_cross_attend_heads=c.num_cross_attend_heads[i],
        self_attend_widening_factor=c.self_attend_widening_factor[i],
        cross_attend_widening_factor=c.cross_attend_widening_factor[i], regroup_inputs=i > 0,
        regroup_type=c.regroup_type, skip_channels=c.num_channels[k - 1 - i] if i > mid else None,
        num_latents_train=c.processor_num_latents_train if i == mid else None, dropout_prob=c.dropout_prob,
        drop_path_rate=c.drop_path_rate)


class HiPFrontEnd:
    """Embedding side shared by :class:`HiP` and the classifier built on its encoder: per-modality
    embedders, learned position tables, their per-slot projections and optional mask tokens, with
    the input checks. Parameter names are those of :class:`HiP`, so state dicts transfer by key."""

    hip_config: HiPConfig

    def _build_front_end(self, c: HiPConfig) -> None:
        e = c.num_embedding_channels
        self.embedders = nn.ModuleDict({m: nn.Linear(c.modalities[m][1], e) for m in c.inputs})
        self.position_tables = nn.ParameterDict({m: nn.Parameter(torch.empty(c.modalities[m][0], e))
                                                 for m in c.inputs})
        project = c.num_position_encoding_channels is not None and c.num_position_encoding_channels != e
        slots = c.num_position_slots if c.num_position_slots is not None else len(c.inputs)
        # One bias-free C_emb x C_emb projection per modality slot (Haiku's position_encoding_linear, _1, ...).
        self.position_projections = nn.ModuleList(nn.Linear(e, e, bias=False) for _ in range(slots if project else 0))
        if c.use_mask_token:
            self.mask_tokens = nn.ParameterDict({m: nn.Parameter(torch.empty(e)) for m in c.inputs})

    def _init_front_end(self, extra_linears: tuple = (), extra_tables: tuple = ()) -> None:
        """Fan-in init of projections, embedders (then ``extra_linears``), tables (then ``extra_tables``);
        mask tokens truncated normal 0.02 (as MAE's)."""
        for linear in [*self.position_projections, *self.embedders.values(), *extra_linears]:
            init_linear_fan_in(linear)
        for table in [*self.position_tables.values(), *extra_tables]:
            init_table_fan_in(table)
        if self.hip_config.use_mask_token:
            for token in self.mask_tokens.values():
                init_trunc_normal(token, 0.02)

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward``: ``{"inputs": {m: (B, M_m, C_m)}}`` standard normal, for as
        many non-label modalities as one call may carry (``num_position_slots``) and every label modality."""
        c = self.hip_config
        slots = c.num_position_slots if c.num_position_slots is not None else len(c.inputs)
        names = [*c.inputs[:slots], *c.label_modalities]
        ref = next(iter(self.embedders.values())).weight
        return {"inputs": {m: torch.randn(batch_size, *c.modalities[m], generator=generator).to(ref)
                           for m in names}}

    def _check_inputs(self, inputs: dict[str, Tensor]) -> tuple[list[str], list[str]]:
        """Validate the call's modalities; return (non-label names, label names) in processing order."""
        c = self.hip_config
        if not isinstance(inputs, dict) or not inputs:
            raise TypeError(f"inputs must be a non-empty dict modality -> (B, M, C) tensor, got "
                            f"{type(inputs).__name__}")
        names = sorted(inputs) if c.sort_modalities else list(inputs)
        batch = None
        for name in names:
            x = inputs[name]
            if name not in c.modalities:
                raise ValueError(f"unknown modality {name!r}; known modalities: {list(c.modalities)}")
            if not isinstance(x, Tensor):
                raise TypeError(f"modality {name!r} must be a torch.Tensor, got {type(x).__name__}")
            index_dim, channels = c.modalities[name]
            if x.dim() != 3 or tuple(x.shape[1:]) != (index_dim, channels):
                raise ValueError(f"modality {name!r} must have shape (B, {index_dim}, {channels}), got "
                                 f"{tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"modality {name!r} has batch size {x.shape[0]} but an earlier modality has {batch}")
            batch = x.shape[0]
            if batch == 0:
                raise ValueError(f"modality {name!r} must have a non-empty batch, got shape {tuple(x.shape)}")
            if not x.is_floating_point():
                raise TypeError(f"modality {name!r} must be a floating tensor, got {x.dtype}")
            check_input_dtype(x, f"modality {name!r}", next(iter(self.embedders.values())).weight.dtype)
        plain = [m for m in names if m not in c.label_modalities]
        labels = [m for m in names if m in c.label_modalities]
        if not plain:
            raise ValueError(f"inputs need at least one non-label modality of {list(c.inputs)}, got only {labels}")
        slots = c.num_position_slots if c.num_position_slots is not None else len(c.inputs)
        if len(plain) > slots:
            raise ValueError(f"{len(plain)} non-label modalities {plain} in one call but num_position_slots={slots}")
        return plain, labels

    def _check_mask(self, mask: dict[str, Tensor], inputs: dict[str, Tensor], plain: list[str]) -> None:
        if not self.hip_config.use_mask_token:
            raise ValueError("mask needs a model built with use_mask_token=True (a learned token per modality)")
        if not isinstance(mask, dict):
            raise TypeError(f"mask must be a dict modality -> (B, M) bool tensor, got {type(mask).__name__}")
        for name, m in mask.items():
            if name not in plain:
                raise ValueError(f"mask given for {name!r}, which is not a non-label modality of this call {plain}")
            x = inputs[name]
            if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != tuple(x.shape[:2]):
                shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"mask of modality {name!r} must be a bool tensor of shape {tuple(x.shape[:2])}, "
                                 f"got {shape}")

    def embed(self, inputs: dict[str, Tensor], names: list[str], mask: dict[str, Tensor] | None = None,
              ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``{m: (B, M_m, C_m)}`` -> (embedded + positions, position queries), both ``{m: (B, M_m, C_emb)}``.
        ``mask[m]: (B, M_m)`` (True = masked) replaces the embedded input by the modality's mask token."""
        z, queries = {}, {}
        for slot, name in enumerate(names):
            pos = self.position_tables[name]  # (M_m, C_emb)
            if len(self.position_projections):
                pos = self.position_projections[slot](pos)
            x = inputs[name]
            emb = self.embedders[name](x)  # (B, M_m, C_emb)
            if mask is not None and name in mask:
                emb = torch.where(mask[name][..., None], self.mask_tokens[name].to(emb.dtype), emb)
            z[name] = emb + pos
            queries[name] = pos.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, M_m, C_emb)
        return z, queries

    def group_plan(self, lengths: dict[str, int]) -> GroupPlan:
        """The ``ConstNumGrouper`` layout of modalities with these lengths (in call order); with a single
        block (the official Perceiver IO baselines) the ``ConcatenateGrouper`` layout."""
        if len(self.hip_config.num_groups) == 1:
            return plan_concatenate(lengths)
        return plan_groups(lengths, self.hip_config.num_groups[0])


class HiP(HiPFrontEnd, PerceiverModel, model_type="hip"):
    """HiP / HiPClassBottleneck. ``forward(inputs, mask=None)`` returns ``{"input_reconstruction":
    {m: (B, M_m, C_m)}, "latents": {m: (B, L_m, C_last)}}`` for the modalities present in ``inputs``
    (any non-empty subset of ``config.modalities`` with at least one non-label modality).

    Construction declares parameters; :meth:`init_weights` applies the official initialisation and
    is called by ``__init__`` unless the parameters live on the meta device.
    """

    config_class = HiPConfig

    def __init__(self, config: HiPConfig) -> None:
        super().__init__(config)
        c = config
        e, mid = c.num_embedding_channels, c.processor_index
        self._build_front_end(c)
        self.blocks = nn.ModuleList(build_block(c, i) for i in range(len(c.num_groups)))
        self.reconstruction_head = ReconstructionHead(query_channels=e, latent_channels=c.num_channels[-1])
        self.unembedders = nn.ModuleDict({m: nn.Linear(e, c.modalities[m][1]) for m in c.inputs})
        labels = c.label_modalities
        if labels:
            d = c.num_channels[mid - 1]  # width of the processor's keys/values
            self.label_embedders = nn.ModuleDict({m: nn.Linear(c.modalities[m][1], d) for m in labels})
            self.label_position_tables = nn.ParameterDict({m: nn.Parameter(torch.empty(c.modalities[m][0], d))
                                                           for m in labels})
            self.label_reconstruction_head = ReconstructionHead(query_channels=d, latent_channels=c.num_channels[mid])
            self.label_unembedders = nn.ModuleDict({m: nn.Linear(d, c.modalities[m][1]) for m in labels})
        self.init_weights_unless_meta()

    @property
    def hip_config(self) -> HiPConfig:
        return self.config

    def init_weights(self) -> None:
        """Official initialisation: fan-in VarianceScaling(1.0) linears and tables, zero unembedders."""
        heads = [self.reconstruction_head, *self.blocks]
        unembedders, linears, tables = [self.unembedders], (), ()
        if self.config.label_modalities:
            heads.append(self.label_reconstruction_head)
            unembedders.append(self.label_unembedders)
            linears, tables = tuple(self.label_embedders.values()), tuple(self.label_position_tables.values())
        for module in heads:
            module.init_weights()
        self._init_front_end(linears, tables)
        for linear in (lin for d in unembedders for lin in d.values()):
            init_zeros(linear)

    # ----------------------------------------------------------------------------------------- forward

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """As :meth:`HiPFrontEnd.example_inputs`, plus ``mask`` hiding every other position of each non-label
        modality when the model has mask tokens."""
        kwargs = super().example_inputs(batch_size, generator=generator)
        if self.config.use_mask_token:
            kwargs["mask"] = {m: (torch.arange(x.shape[1], device=x.device) % 2 == 0).expand(x.shape[:2])
                              for m, x in kwargs["inputs"].items() if m not in self.config.label_modalities}
        return kwargs

    def forward(self, inputs: dict[str, Tensor], mask: dict[str, Tensor] | None = None,
                ) -> dict[str, dict[str, Tensor]]:
        """``inputs: {m: (B, M_m, C_m)}`` -> ``{"input_reconstruction": {m: (B, M_m, C_m)}, "latents": {...}}``.

        ``mask: {m: (B, M_m) bool}`` (True = hidden; needs ``use_mask_token``) replaces those embedded
        inputs by the modality's mask token; positions are still added and every position is reconstructed.
        """
        c = self.config
        plain, labels = self._check_inputs(inputs)
        if mask is not None:
            self._check_mask(mask, inputs, plain)
        plan = self.group_plan({m: inputs[m].shape[1] for m in plain})
        z_in, q_in = self.embed(inputs, plain, mask)
        z, queries = group(plan, z_in), group(plan, q_in)  # (B, G0, T, C_emb) each
        k, mid = len(self.blocks), c.processor_index
        hidden: list[Tensor] = []
        label_out: dict[str, Tensor] = {}
        for i, block in enumerate(self.blocks):
            if i == mid and labels:
                tokens, label_queries = self._embed_labels(inputs, labels)
                z = torch.cat([regroup(z, 1, c.regroup_type), tokens], dim=2)  # (B, 1, G*N + sum M_label, C)
            z = block(z, hidden[k - 1 - i] if i > mid else None)  # (B, G_i, N_i, C_i)
            hidden.append(z)
            if i == mid and labels:
                label_out = self._reconstruct_labels(label_queries, z)
        recon = ungroup(plan, self.reconstruction_head(queries, z))  # {m: (B, M_m, C_emb)}
        out = {m: self.unembedders[m](recon[m]) for m in plain}
        return {"input_reconstruction": {**out, **label_out}, "latents": ungroup(plan, z)}

    def _embed_labels(self, inputs: dict[str, Tensor], labels: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Label tokens ``(B, 1, sum M_label, D)`` (dict order) and each label's queries ``(B, 1, M, D)``."""
        tokens, queries = [], {}
        for name in labels:
            x = inputs[name]
            pos = self.label_position_tables[name]  # (M, D)
            tokens.append(self.label_embedders[name](x) + pos)
            queries[name] = pos.expand(x.shape[0], -1, -1).unsqueeze(1)  # (B, 1, M, D)
        return torch.cat(tokens, dim=1).unsqueeze(1), queries

    def _reconstruct_labels(self, queries: dict[str, Tensor], z: Tensor) -> dict[str, Tensor]:
        """Shared head over the processor output ``z: (B, 1, N, D_mid)`` -> ``{label: (B, M, C_label)}``."""
        return {m: self.label_unembedders[m](self.label_reconstruction_head(q, z)[:, 0]) for m, q in queries.items()}
