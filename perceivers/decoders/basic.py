"""Decoders: basic (position-encoding queries), classification (one learned query), projection.

All decoders take latents ``z: (B, N, D)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from perceivers.layers.attention import check_mask
from perceivers.layers.blocks import CrossAttentionBlock
from perceivers.layers.init import init_linear_haiku, init_zeros
from perceivers.layers.position import (
    FourierPositionEncoding,
    TrainablePositionEncoding,
    subsampled_positions,
)
from perceivers.models.perceiver_io.config import DecoderConfig


class BasicDecoder(nn.Module):
    """Cross-attends from output queries to the latents (official ``BasicDecoder``).

    Queries are trainable or Fourier position encodings over ``output_index_dims``, optionally
    subsampled by flat indices (Fourier queries then use the official ``-1 + 2*idx/n`` positions;
    a trainable table ignores subsampling, as officially), optionally concatenated after the
    preprocessed input (``[inputs_without_pos, pos]``, the official order). A ``query_mask: (B, O)``
    is honoured: masked output rows get an attention result of exactly zero (HF transformers
    silently ignores the decoder query mask).
    """

    def __init__(self, config: DecoderConfig, *, latent_channels: int, input_channels: int = 0,
                 activation: str = "gelu_tanh") -> None:
        super().__init__()
        c = self.config = config
        self.query_pos: FourierPositionEncoding | TrainablePositionEncoding | None = None
        if c.position_encoding == "trainable":
            self.query_pos = TrainablePositionEncoding(math.prod(c.output_index_dims), c.num_query_channels,
                                                       init_scale=c.query_init_scale)
        elif c.position_encoding == "fourier":
            self.query_pos = FourierPositionEncoding(c.output_index_dims, num_bands=c.num_bands,
                                                     max_resolution=c.max_resolution, concat_pos=c.concat_pos,
                                                     sine_only=c.sine_only)
        self.query_channels = c.query_channels(input_channels)
        self.cross_attend = CrossAttentionBlock(
            q_channels=self.query_channels, kv_channels=latent_channels, num_heads=c.num_heads,
            qk_channels=c.qk_channels, v_channels=c.v_channels, shape_for_attn="kv",
            widening_factor=c.widening_factor, use_query_residual=c.use_query_residual, activation=activation,
        )
        self.output = nn.Linear(self.query_channels, c.num_outputs) if c.final_project else None

    def init_weights(self) -> None:
        if isinstance(self.query_pos, TrainablePositionEncoding):
            self.query_pos.init_weights()
        self.cross_attend.init_weights()
        if self.output is not None:
            init_linear_haiku(self.output)

    @property
    def num_queries(self) -> int:
        return math.prod(self.config.output_index_dims)

    def decoder_query(self, batch_size: int, *, inputs_without_pos: Tensor | None = None,
                      subsampled_points: Tensor | None = None, device=None, dtype=torch.float32) -> Tensor:
        """Queries ``(B, O, C_q)``; ``subsampled_points: (O',)`` or ``(B, O')`` flat indices."""
        c = self.config
        parts = []
        if isinstance(self.query_pos, FourierPositionEncoding):
            if subsampled_points is not None:
                pos = subsampled_positions(subsampled_points, c.output_index_dims, dtype=dtype)
                if pos.dim() == 2:
                    pos = pos.unsqueeze(0).expand(batch_size, -1, -1)
                parts.append(self.query_pos(batch_size, pos=pos))
            else:
                parts.append(self.query_pos(batch_size, device=device, dtype=dtype))
        elif isinstance(self.query_pos, TrainablePositionEncoding):
            parts.append(self.query_pos(batch_size))
        if c.concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError("concat_preprocessed_input=True needs inputs_without_pos")
            # A trainable table ignores subsampling (official), so its inputs are not subsampled either.
            if subsampled_points is not None and not isinstance(self.query_pos, TrainablePositionEncoding):
                # (B, M, C) -> (B, O', C) at the subsampled positions
                idx = subsampled_points if subsampled_points.dim() == 2 else subsampled_points.expand(batch_size, -1)
                inputs_without_pos = inputs_without_pos.gather(
                    1, idx[..., None].expand(-1, -1, inputs_without_pos.shape[-1]))
            parts.insert(0, inputs_without_pos)  # official order: [inputs_without_pos, pos_emb]
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def check_subsampled_points(self, points: Tensor | None, batch_size: int) -> None:
        if points is None:
            return
        if not isinstance(points, Tensor) or points.dtype not in (torch.int32, torch.int64):
            raise TypeError("subsampled_output_points must be an integer tensor of flat output indices")
        if points.dim() not in (1, 2) or (points.dim() == 2 and points.shape[0] != batch_size):
            raise ValueError(f"subsampled_output_points must have shape (O,) or (B={batch_size}, O), "
                             f"got {tuple(points.shape)}")
        if points.numel() == 0 or int(points.min()) < 0 or int(points.max()) >= self.num_queries:
            raise ValueError(f"subsampled_output_points must be non-empty indices in [0, {self.num_queries})")

    def forward(self, z: Tensor, *, query: Tensor | None = None, query_mask: Tensor | None = None,
                inputs_without_pos: Tensor | None = None, subsampled_points: Tensor | None = None) -> Tensor:
        """``z: (B, N, D)`` -> ``(B, O, num_outputs)`` (or ``(B, O, C_q)`` without ``final_project``)."""
        b = z.shape[0]
        self.check_subsampled_points(subsampled_points, b)
        if query is None:
            query = self.decoder_query(b, inputs_without_pos=inputs_without_pos, subsampled_points=subsampled_points,
                                       device=z.device, dtype=z.dtype)
        check_mask(query_mask, batch=b, num_queries=query.shape[1], num_keys=query.shape[1], name="query_mask")
        if query_mask is not None and query_mask.dim() != 2:
            raise ValueError(f"query_mask must have shape (B, O)=({b}, {query.shape[1]}), got {tuple(query_mask.shape)}")
        mask = query_mask[:, :, None].expand(-1, -1, z.shape[1]) if query_mask is not None else None  # (B, O, N)
        out = self.cross_attend(query, z, mask)
        return self.output(out) if self.output is not None else out


class ClassificationDecoder(BasicDecoder):
    """One trainable query cross-attends to the latents, then ``Linear`` to classes: ``(B, N, D) -> (B, K)``.

    Like the official ``ClassificationDecoder`` it has no query mask and ignores subsampling.
    """

    def __init__(self, config: DecoderConfig, *, latent_channels: int, activation: str = "gelu_tanh") -> None:
        super().__init__(config.replace(output_index_dims=(1,)), latent_channels=latent_channels,
                         activation=activation)

    def forward(self, z: Tensor, **_: object) -> Tensor:  # type: ignore[override]
        return super().forward(z)[:, 0]


class ProjectionDecoder(nn.Module):
    """Mean over latents, then a zero-initialised ``Linear`` (original Perceiver): ``(B, N, D) -> (B, K)``."""

    def __init__(self, config: DecoderConfig, *, latent_channels: int) -> None:
        super().__init__()
        self.config = config
        self.output = nn.Linear(latent_channels, config.num_outputs)

    def init_weights(self) -> None:
        init_zeros(self.output)

    def forward(self, z: Tensor, **_: object) -> Tensor:
        return self.output(z.mean(dim=1))
