"""Decoders: basic (position-encoding queries), classification (one learned query), projection; and their
config :class:`DecoderConfig`.

All decoders take latents ``z: (B, N, D)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_divisible,
    check_int,
    check_optional_int,
    check_scale,
    fail,
    normalize_int_tuple,
)
from perceivers.layers.attention import check_mask
from perceivers.layers.blocks import LAYER_NORM_EPS, CrossAttentionBlock
from perceivers.layers.init import init_linear_haiku, init_zeros
from perceivers.layers.position import (
    FourierPositionEncoding,
    TrainablePositionEncoding,
    fourier_output_size,
    subsampled_positions,
)
from perceivers.preprocessors.image import POSITION_TYPES

DECODER_TYPES = ("classification", "projection", "basic")


@dataclass(frozen=True, kw_only=True)
class DecoderConfig(ConfigBase):
    """Decoder. ``classification``: one learned query (official ``ClassificationDecoder``);
    ``projection``: mean over latents then a zero-initialised ``Linear`` (original Perceiver);
    ``basic``: queries from position encodings over ``output_index_dims`` (official ``BasicDecoder``).

    ``type`` is also the tag that names this decoder in a model config (one config class, three tags).

    Options for the other PyTorch ports (defaults = the official decoders): ``external_queries`` (basic: the
    caller passes the queries ``(B, O, num_query_channels)`` or ``(O, num_query_channels)`` to ``forward``,
    as lucidrains' ``PerceiverIO``; no position encoding), ``qkv_bias=False`` (no q/k/v biases),
    ``use_mlp=False`` (the cross-attention without its MLP half), ``projection_norm`` (projection: a
    LayerNorm between the mean over latents and the ``Linear``, lucidrains' ``Perceiver`` head).
    """

    type: str = "classification"
    num_outputs: int = 1000
    output_index_dims: tuple[int, ...] = (1,)
    position_encoding: str = "trainable"
    num_query_channels: int = 1024
    num_bands: int = 64
    max_resolution: tuple[int, ...] | None = None
    concat_pos: bool = True
    sine_only: bool = False
    query_init_scale: float = 0.02
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    concat_preprocessed_input: bool = False
    final_project: bool = True
    external_queries: bool = False
    qkv_bias: bool = True
    use_mlp: bool = True
    projection_norm: bool = False

    def __post_init__(self) -> None:
        check_choice("type", self.type, DECODER_TYPES)
        check_scale("query_init_scale", self.query_init_scale)
        check_bools(self, "concat_pos", "sine_only", "use_query_residual", "concat_preprocessed_input",
                     "final_project", "external_queries", "qkv_bias", "use_mlp", "projection_norm")
        check_int("num_outputs", self.num_outputs)
        normalize_int_tuple(self, "output_index_dims", self.output_index_dims)
        check_choice("position_encoding", self.position_encoding, POSITION_TYPES)
        check_int("num_query_channels", self.num_query_channels)
        check_int("num_bands", self.num_bands)
        normalize_int_tuple(self, "max_resolution", self.max_resolution, allow_none=True)
        if self.max_resolution is not None and len(self.max_resolution) != len(self.output_index_dims):
            fail("max_resolution", self.max_resolution, f"{len(self.output_index_dims)} entries, one per output dim")
        for name in ("num_heads", "widening_factor"):
            check_int(name, getattr(self, name))
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        if self.type == "classification" and self.position_encoding != "trainable":
            fail("position_encoding", self.position_encoding, "'trainable' for a classification decoder")
        if self.type != "basic" and not self.final_project:
            fail("final_project", self.final_project, f"True for a {self.type!r} decoder (only 'basic' can skip "
                  "the projection)")
        if self.projection_norm and self.type != "projection":
            fail("projection_norm", True, f"False for a {self.type!r} decoder (a 'projection' decoder's option)")
        if self.external_queries:
            if self.type != "basic":
                fail("external_queries", True, f"False for a {self.type!r} decoder (a 'basic' decoder's option)")
            if self.position_encoding != "none" or self.concat_preprocessed_input:
                fail("position_encoding", self.position_encoding, "'none' (and concat_preprocessed_input=False) "
                     "with external_queries=True: the caller passes the queries")
        elif self.type == "basic" and self.position_encoding == "none" and not self.concat_preprocessed_input:
            fail("position_encoding", "none", "'fourier' or 'trainable' unless concat_preprocessed_input=True "
                 "or external_queries=True")

    def debug_size(self) -> DecoderConfig:
        """The same decoder at test size: at most 5 outputs, 4 query positions per axis, 16 query channels,
        4 Fourier bands and 2 heads; explicit qk / v widths 8 / 16 (see :func:`debug_attention`)."""
        dims = tuple(min(d, 4) for d in self.output_index_dims)
        return self.replace(num_outputs=min(self.num_outputs, 5), output_index_dims=dims,
                            max_resolution=None if self.max_resolution is None else dims,
                            num_query_channels=min(self.num_query_channels, 16), num_bands=min(self.num_bands, 4),
                            **debug_attention(self))

    def query_channels(self, input_channels: int) -> int:
        """Width of the decoder queries (``input_channels`` = preprocessed input without positions)."""
        if self.external_queries:
            return self.num_query_channels
        if self.position_encoding == "trainable":
            c = self.num_query_channels
        elif self.position_encoding == "fourier":
            c = fourier_output_size(len(self.output_index_dims), self.num_bands, concat_pos=self.concat_pos,
                                    sine_only=self.sine_only)
        else:
            c = 0
        return c + (input_channels if self.concat_preprocessed_input else 0)


def debug_attention(config: Any) -> dict[str, Any]:
    """Test-size attention fields of a decoder config: at most 2 heads, explicit qk / v widths 8 / 16 (the
    defaults follow the latents, 16 channels at test size)."""
    return dict(num_heads=min(config.num_heads, 2), qk_channels=None if config.qk_channels is None else 8,
                v_channels=None if config.v_channels is None else 16)


def check_decoder_heads(config: Any, latent_channels: int) -> None:
    """``ValueError`` unless a decoder cross-attention's qk/v widths (``config.qk_channels`` / ``v_channels``,
    default the latent width ``latent_channels``: keys and values are the latents) divide by ``num_heads``."""
    qk = config.qk_channels or latent_channels
    check_divisible("decoder qk_channels", qk, "decoder num_heads", config.num_heads)
    check_divisible("decoder v_channels", config.v_channels or qk, "decoder num_heads", config.num_heads)


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
            qkv_bias=c.qkv_bias, use_mlp=c.use_mlp,
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

    def check_external_query(self, query: Tensor | None, batch_size: int, z: Tensor) -> Tensor | None:
        """Caller queries (``external_queries``): ``(O, C_q)`` or ``(B, O, C_q)`` -> ``(B, O, C_q)``."""
        if not self.config.external_queries:
            return query
        c = self.query_channels
        if not isinstance(query, Tensor):
            raise TypeError(f"this decoder reads its queries from the caller: pass queries, a float tensor "
                            f"(O, {c}) or (B, O, {c}), got {type(query).__name__}")
        if query.dim() == 2:
            query = query.unsqueeze(0).expand(batch_size, -1, -1)  # (O, C) -> (B, O, C)
        if query.dim() != 3 or query.shape[0] != batch_size or query.shape[2] != c or query.shape[1] == 0:
            raise ValueError(f"queries must have shape (O, {c}) or (B={batch_size}, O, {c}), "
                             f"got {tuple(query.shape)}")
        if query.dtype != z.dtype:
            raise TypeError(f"queries dtype is {query.dtype} but the latents are {z.dtype}")
        return query

    def forward(self, z: Tensor, *, query: Tensor | None = None, query_mask: Tensor | None = None,
                inputs_without_pos: Tensor | None = None, subsampled_points: Tensor | None = None) -> Tensor:
        """``z: (B, N, D)`` -> ``(B, O, num_outputs)`` (or ``(B, O, C_q)`` without ``final_project``)."""
        b = z.shape[0]
        self.check_subsampled_points(subsampled_points, b)
        query = self.check_external_query(query, b, z)
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
    """Mean over latents, [LayerNorm,] then a zero-initialised ``Linear`` (original Perceiver): ``(B, N, D) -> (B, K)``."""

    def __init__(self, config: DecoderConfig, *, latent_channels: int) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(latent_channels, eps=LAYER_NORM_EPS) if config.projection_norm else None
        self.output = nn.Linear(latent_channels, config.num_outputs)

    def init_weights(self) -> None:
        if self.norm is not None:
            self.norm.reset_parameters()
        init_zeros(self.output)

    def forward(self, z: Tensor, **_: object) -> Tensor:
        pooled = z.mean(dim=1)  # (B, D)
        return self.output(self.norm(pooled) if self.norm is not None else pooled)
