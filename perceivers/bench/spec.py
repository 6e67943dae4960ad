"""The benchmarked configuration (:class:`BenchSpec`) and its analytic matmul FLOP count (:func:`matmul_flops`).

The bench classifier of issue 14 is a Perceiver IO over tokens ``(B, M, 64)``: 256 latents of 512 channels, one
cross-attend (1 head) and one block of 6 self-attends (8 heads), MLP widening 4 in the encoder, and a
classification decoder with one trainable 64-channel query over 1,000 classes (widening 1). That is 21,887,784
parameters for ours, transformers and krasserm (the issue quotes 21,887,498; no combination of widening
factors, query width and class count gives that number exactly, see ``docs/performance.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from perceivers.core.validation import ConfigBase, check_bool, check_int


@dataclass(frozen=True, kw_only=True)
class BenchSpec(ConfigBase):
    """Sizes shared by every implementation. Attention widths follow the official defaults: encoder cross-attention
    q/k/v of ``input_channels`` (shape for attention ``'kv'``), self-attention of ``latent_channels``, decoder
    cross-attention q/k/v of ``latent_channels`` with output ``query_channels``."""

    input_channels: int = 64
    num_latents: int = 256
    latent_channels: int = 512
    num_self_attends: int = 6
    cross_heads: int = 1
    self_heads: int = 8
    cross_widening: int = 4
    self_widening: int = 4
    num_classes: int = 1000
    query_channels: int = 64
    decoder_widening: int = 1

    def __post_init__(self) -> None:
        for name in ("input_channels", "num_latents", "latent_channels", "num_self_attends", "cross_heads",
                     "self_heads", "cross_widening", "self_widening", "num_classes", "query_channels",
                     "decoder_widening"):
            check_int(name, getattr(self, name))

    @classmethod
    def tiny(cls) -> BenchSpec:
        """A test-size spec (a few thousand parameters) with the same structure."""
        return cls(input_channels=8, num_latents=4, latent_channels=16, num_self_attends=2, cross_heads=1,
                   self_heads=2, cross_widening=2, self_widening=2, num_classes=5, query_channels=8,
                   decoder_widening=1)


#: Named specs of the worker's ``--size``.
SPECS = {"bench": BenchSpec, "tiny": BenchSpec.tiny}


def matmul_flops(spec: BenchSpec, m: int, batch: int, *, training: bool, glu: bool = False,
                 mlp_widening: int | None = None, decoder_qk: int | None = None, decoder_mlp: bool = True) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass of ``batch`` examples of ``m`` inputs, times 3 for a
    training step (forward + backward, the backward being two matmuls per forward matmul).

    Counted: every linear layer and the two attention products (scores ``q k^T`` and ``p v``) of every
    attention; not counted: norms, activations, softmax, the optimizer. ``glu`` counts an MLP whose first
    projection is twice as wide (lucidrains' GEGLU); ``mlp_widening`` replaces both encoder widening factors
    (lucidrains: always 4); ``decoder_qk`` overrides the decoder's q/k/v width
    (lucidrains uses 64) and ``decoder_mlp=False`` drops the decoder MLP (lucidrains' ``decoder_ff=False``).
    """
    check_int("m", m)
    check_int("batch", batch)
    check_bool("training", training)
    n, c, ci, cq = spec.num_latents, spec.latent_channels, spec.input_channels, spec.query_channels
    fc1 = 2 if glu else 1
    cross_widening = mlp_widening or spec.cross_widening
    self_widening = mlp_widening or spec.self_widening
    # encoder cross-attend: q from latents, k/v from inputs (qk = v = input channels), output back to c
    qk = ci
    macs = n * c * qk + 2 * m * ci * qk + 2 * n * m * qk + n * qk * c
    macs += (fc1 + 1) * n * c * cross_widening * c
    # self-attends: q, k, v, o projections, scores and weighted sum over n latents, MLP
    per_layer = 4 * n * c * c + 2 * n * n * c + (fc1 + 1) * n * c * self_widening * c
    macs += spec.num_self_attends * per_layer
    # decoder: one query of cq channels attends to the latents, then its MLP and the class head
    dqk = decoder_qk or c
    macs += cq * dqk + 2 * n * c * dqk + 2 * dqk * n + dqk * cq
    if decoder_mlp:
        macs += (fc1 + 1) * cq * spec.decoder_widening * cq
    macs += cq * spec.num_classes
    return 2 * macs * batch * (3 if training else 1)
