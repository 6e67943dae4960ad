"""The official ``MultimodalDecoder`` (perceiver-io.md §6.2, §10.5): per-modality queries, one shared decoder.

Each modality builds its queries only (Fourier features over its output grid, or a learned table), pads
them with a learned per-modality vector to the common width ``max(query widths) + min_padding_size``;
the queries of all modalities are concatenated in sorted name order and cross-attend to the latents in
one shared cross-attention block, followed by ``Linear(-> num_output_channels)``. The result is split back
by modality. Like the official decoder (and HF's), no query mask is applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from perceivers.layers.blocks import CrossAttentionBlock
from perceivers.layers.init import init_linear_haiku, init_trunc_normal
from perceivers.layers.position import (
    FourierPositionEncoding,
    TrainablePositionEncoding,
    subsampled_positions,
)
from perceivers.models.perceiver_io.multimodal_config import (
    ModalityConfig,
    MultimodalDecoderConfig,
)


def check_points(points: object, name: str, *, batch: int, num_queries: int) -> None:
    """``TypeError``/``ValueError`` unless ``points`` are flat query indices ``(O,)`` or ``(B, O)`` in range."""
    if not isinstance(points, Tensor) or points.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"subsampled_output_points[{name!r}] must be an integer tensor of flat output indices, "
                        f"got {type(points).__name__}")
    if points.dim() not in (1, 2) or (points.dim() == 2 and points.shape[0] != batch):
        raise ValueError(f"subsampled_output_points[{name!r}] must have shape (O,) or (B={batch}, O), "
                         f"got {tuple(points.shape)}")
    if points.numel() == 0 or int(points.min()) < 0 or int(points.max()) >= num_queries:
        raise ValueError(f"subsampled_output_points[{name!r}] must be non-empty indices in [0, {num_queries})")


class MultimodalDecoder(nn.Module):
    """Latents ``z: (B, N, D)`` -> ``{name: (B, O_m, num_output_channels)}`` for the requested modalities.

    Parameters: ``queries[name].pos_embs`` for learned queries (``label``), ``query_padding[name]:
    (1, C_q - C_q,m)``, ``cross_attend`` (queries ``C_q`` wide, keys/values the latents) and ``output``.
    """

    def __init__(self, modalities: Mapping[str, ModalityConfig], config: MultimodalDecoderConfig, *,
                 latent_channels: int, activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.config = c = config
        self.specs = {n: modalities[n] for n in sorted(modalities)}
        self.queries = nn.ModuleDict()
        for name, m in self.specs.items():
            if m.kind == "label":
                self.queries[name] = TrainablePositionEncoding(1, m.query_channels, init_scale=c.query_init_scale)
            else:
                self.queries[name] = FourierPositionEncoding(
                    m.output_grid, num_bands=m.query_num_bands or m.num_bands, max_resolution=m.output_max_resolution,
                    concat_pos=m.concat_pos, sine_only=m.sine_only)
        self.width = max(m.query_width for m in self.specs.values()) + c.min_padding_size
        self.query_padding = nn.ParameterDict({
            n: nn.Parameter(torch.empty(1, self.width - m.query_width)) for n, m in self.specs.items()})
        self.cross_attend = CrossAttentionBlock(
            q_channels=self.width, kv_channels=latent_channels, num_heads=c.num_heads, qk_channels=c.qk_channels,
            v_channels=c.v_channels, widening_factor=c.widening_factor, use_query_residual=c.use_query_residual,
            activation=activation)
        self.output = nn.Linear(self.width, c.num_output_channels)
        for p in self.query_padding.values():
            init_trunc_normal(p, c.query_init_scale)  # usable on its own; a no-op on meta

    def init_weights(self) -> None:
        for query in self.queries.values():
            if isinstance(query, TrainablePositionEncoding):
                query.init_weights()
        for p in self.query_padding.values():
            init_trunc_normal(p, self.config.query_init_scale)
        self.cross_attend.init_weights()
        init_linear_haiku(self.output)

    def check_subsampling(self, points: Mapping[str, Tensor | None] | None, batch: int) -> None:
        if points is None:
            return
        if not isinstance(points, Mapping):
            raise TypeError(f"subsampled_output_points must be a dict name -> indices, got {type(points).__name__}")
        unknown = sorted(set(points) - set(self.specs))
        if unknown:
            raise ValueError(f"subsampled_output_points has unknown modalities {unknown}; known: {list(self.specs)}")
        for name, idx in points.items():
            if idx is None:
                continue
            if self.specs[name].kind == "label":
                raise ValueError(f"modality {name!r} has one learned query and cannot be subsampled: pass None")
            check_points(idx, name, batch=batch, num_queries=self.specs[name].num_queries)

    def modality_query(self, name: str, batch: int, points: Tensor | None, *, device, dtype) -> Tensor:
        """Queries of one modality, padded: ``(B, O_m, C_q)`` (``O_m`` = all or the subsampled points)."""
        query = self.queries[name]
        if isinstance(query, TrainablePositionEncoding):
            q = query(batch)  # (B, 1, C_q,m); learned tables ignore subsampling (official)
        elif points is None:
            q = query(batch, device=device, dtype=dtype)  # full grid, linspace(-1, 1) per axis
        else:
            pos = subsampled_positions(points.to(device), query.index_dims, dtype=dtype)  # (O', d) or (B, O', d)
            if pos.dim() == 2:
                pos = pos.unsqueeze(0).expand(batch, -1, -1)
            q = query(batch, pos=pos)
        q = q.to(dtype)
        pad = self.query_padding[name].to(dtype).expand(batch, q.shape[1], -1)
        return torch.cat([q, pad], dim=-1)

    def forward(self, z: Tensor, subsampled_points: Mapping[str, Tensor | None] | None = None, *,
                modalities: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``z: (B, N, D)`` -> ``{name: (B, O_m, num_output_channels)}`` for ``modalities`` (default all).

        ``subsampled_points[name]``: flat indices ``(O',)`` or ``(B, O')`` into the modality's output grid
        (positions ``-1 + 2 i / n`` per axis, official); ``None`` or absent = the whole grid.
        """
        b = z.shape[0]
        self.check_subsampling(subsampled_points, b)
        names = list(self.specs) if modalities is None else sorted(modalities)
        unknown = sorted(set(names) - set(self.specs))
        if unknown or not names:
            raise ValueError(f"modalities must be a non-empty subset of {list(self.specs)}, got {modalities!r}")
        points = subsampled_points or {}
        queries = [self.modality_query(n, b, points.get(n), device=z.device, dtype=z.dtype) for n in names]
        sizes = [q.shape[1] for q in queries]
        out = self.output(self.cross_attend(torch.cat(queries, dim=1), z))  # (B, sum O_m, C_out)
        return dict(zip(names, out.split(sizes, dim=1)))
