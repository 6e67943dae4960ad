"""Optical-flow decoder (official ``FlowDecoder``) and its config: the queries are the preprocessed input itself.

Output scale: the official colab multiplies the decoder output (already divided by ``rescale_factor`` = 100)
by ``FLOW_SCALE_FACTOR = 20`` (flow in pixels); HF transformers returns it without (pixels / 20).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
from perceivers.layers.init import init_zeros

#: The colab's ``FLOW_SCALE_FACTOR``: training targets were flow / 20 (AutoFlow convention).
FLOW_SCALE_FACTOR = 20.0


@dataclass(frozen=True, kw_only=True)
class FlowDecoderConfig(ConfigBase):
    """Official ``FlowDecoder``: queries = preprocessed input, one cross-attend, ``Linear(-> num_outputs)``.

    ``flow_scale_factor``: multiplies the decoder output (already divided by ``rescale_factor``).
    ``20.0`` (default, the official colab) gives flow in pixels; ``1.0`` reproduces HF transformers'
    ``PerceiverForOpticalFlow``, whose output is pixels / 20. ``chunk_size``: queries decoded per step
    (``None`` = all at once); the result does not depend on it (each query attends independently).
    """

    type: ClassVar[str] = "flow"  # the tag that names this decoder in a model config

    num_outputs: int = 2
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    rescale_factor: float = 100.0
    flow_scale_factor: float = FLOW_SCALE_FACTOR
    chunk_size: int | None = 16384

    def __post_init__(self) -> None:
        for name in ("num_outputs", "num_heads", "widening_factor"):
            check_int(name, getattr(self, name))
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        check_optional_int("chunk_size", self.chunk_size)
        check_bools(self, "use_query_residual")
        check_scale("rescale_factor", self.rescale_factor)
        check_scale("flow_scale_factor", self.flow_scale_factor)


    def debug_size(self) -> FlowDecoderConfig:
        """The same decoder at test size: at most 2 heads, explicit qk / v widths 8 / 16, chunks of at most 16."""
        return self.replace(chunk_size=None if self.chunk_size is None else min(self.chunk_size, 16),
                            **debug_attention(self))


def check_chunk_size(chunk_size: object) -> None:
    """``ValueError`` unless ``chunk_size`` is ``None`` or an int >= 1."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} is invalid: expected an int >= 1 or None (all queries at once)")


class FlowDecoder(nn.Module):
    """Queries ``(B, O, C_q)`` cross-attend to latents ``(B, N, D)`` -> flow ``(B, O, num_outputs)``.

    One cross-attention block (no query residual officially; qk = v = D), ``Linear(C_q -> num_outputs)``
    (``output``, zero-initialised as in the official colab), then ``/ rescale_factor * flow_scale_factor``.
    Queries are decoded ``chunk_size`` at a time: every query attends to the latents independently, so
    the result equals decoding all at once while only one chunk's activations are alive (at inference).
    """

    def __init__(self, config: FlowDecoderConfig, *, query_channels: int, latent_channels: int,
                 activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.config = c = config
        self.cross_attend = CrossAttentionBlock(
            q_channels=query_channels, kv_channels=latent_channels, num_heads=c.num_heads, qk_channels=c.qk_channels,
            v_channels=c.v_channels, shape_for_attn="kv", widening_factor=c.widening_factor,
            use_query_residual=c.use_query_residual, activation=activation,
        )
        self.output = nn.Linear(query_channels, c.num_outputs)

    def init_weights(self) -> None:
        self.cross_attend.init_weights()
        init_zeros(self.output)

    def forward(self, z: Tensor, query: Tensor, *, chunk_size: int | None = None) -> Tensor:
        """``z: (B, N, D)``, ``query: (B, O, C_q)`` -> ``(B, O, num_outputs)``; ``chunk_size`` overrides the config."""
        check_chunk_size(chunk_size)
        c = self.config
        size = chunk_size or c.chunk_size or query.shape[1]
        # Written into one preallocated tensor: keeping a list of small per-chunk outputs between the large
        # freed temporaries fragments the heap, and the process's RSS then grew with the number of chunks.
        out = query.new_empty(*query.shape[:2], c.num_outputs)  # (B, O, num_outputs)
        for start in range(0, query.shape[1], size):
            out[:, start:start + size] = self.output(self.cross_attend(query[:, start:start + size], z))
        out = out / c.rescale_factor  # official FlowDecoder (HF returns this)
        return out * c.flow_scale_factor if c.flow_scale_factor != 1.0 else out
