"""The official ``MultimodalDecoder`` (``perceiver.py``; ``video_autoencoding`` colab) and its config:
per-modality queries, one shared decoder, per-modality output layers.

Each modality builds its queries only (Fourier features over its output grid, or a learned table), pads
them with a learned per-modality vector to the common width ``max(query widths) + min_padding_size``;
the queries of all modalities are concatenated in sorted name order and cross-attend to the latents in
one shared cross-attention block, followed by ``Linear(-> num_output_channels)``. The result is split back
by modality, and each modality's output layer (:func:`modality_postprocessors`, :func:`postprocess`) maps it
back to the modality's layout. Like the official decoder (and HF's), no query mask is applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_int,
    check_optional_int,
    check_scale,
)
from perceivers.decoders.basic import debug_attention
from perceivers.layers.blocks import CrossAttentionBlock
from perceivers.layers.init import init_linear_haiku, init_trunc_normal
from perceivers.layers.position import (
    FourierPositionEncoding,
    TrainablePositionEncoding,
    subsampled_positions,
)
from perceivers.preprocessors.modality import ModalityConfig


@dataclass(frozen=True, kw_only=True)
class MultimodalDecoderConfig(ConfigBase):
    """The shared decoder: per-modality queries padded to ``max(query widths) + min_padding_size`` with a
    learned vector per modality, one cross-attention to the latents (``qk_channels=None``: the latent width),
    then ``Linear(-> num_output_channels)``; each modality's output layer follows (see
    :func:`modality_postprocessors`). The modalities are the preprocessor's."""

    type: ClassVar[str] = "multimodal"  # the tag that names this decoder in a model config

    min_padding_size: int = 2
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    num_output_channels: int = 512
    query_init_scale: float = 0.02

    def __post_init__(self) -> None:
        for name in ("num_heads", "widening_factor", "num_output_channels"):
            check_int(name, getattr(self, name))
        check_int("min_padding_size", self.min_padding_size, minimum=0)
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        check_bools(self, "use_query_residual")
        check_scale("query_init_scale", self.query_init_scale)

    def debug_size(self) -> MultimodalDecoderConfig:
        """The same decoder at test size: at most 16 output channels, 2 heads, explicit qk / v widths 8 / 16."""
        return self.replace(num_output_channels=min(self.num_output_channels, 16), **debug_attention(self))

    def query_width(self, modalities: Mapping[str, ModalityConfig]) -> int:
        """Common decoder query width after padding (1026 for the released model)."""
        return max(m.query_width for m in modalities.values()) + self.min_padding_size


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
        self.width = c.query_width(self.specs)
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


def modality_postprocessors(modalities: Mapping[str, ModalityConfig], channels: int) -> nn.ModuleDict:
    """One output layer per modality (official postprocessors): ``Linear(channels -> m.output_channels)``."""
    return nn.ModuleDict({n: nn.Linear(channels, m.output_channels) for n, m in modalities.items()})


def postprocess(m: ModalityConfig, y: Tensor, *, subsampled: bool) -> Tensor:
    """Output-layer result ``y: (B, O_m, C_out,m)`` -> the modality's layout: label logits ``(B, K)``, audio
    samples ``(B, O' * spp)``, video ``(B, T, H, W, C)`` (or ``(B, O', C)`` when ``subsampled``)."""
    if m.kind == "label":
        return y[:, 0]  # (B, K)
    if m.kind == "audio":
        return y.reshape(y.shape[0], -1)  # (B, O' * spp) samples
    if subsampled:
        return y
    return y.reshape(y.shape[0], *m.output_grid, y.shape[-1])  # (B, T, H, W, C)
