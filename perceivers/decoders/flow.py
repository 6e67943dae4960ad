"""Optical-flow decoder (official ``FlowDecoder``): the queries are the preprocessed input itself."""

from __future__ import annotations

from torch import Tensor, nn

from perceivers.layers.blocks import CrossAttentionBlock
from perceivers.layers.init import init_zeros
from perceivers.models.perceiver_io.flow_config import FlowDecoderConfig


def check_chunk_size(chunk_size: object) -> None:
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
