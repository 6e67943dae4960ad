"""Registered Perceiver AR variants with their exact parameter counts.

Counts include frozen position tables (as the official count does). The ImageNet 64x64 model is the
released ``imagenet_w_positions`` sweep of the official ``perceiver_ar/experiment.py``
(docs/models.md#perceiver-ar-variants).
"""

from __future__ import annotations

from perceivers.core.registry import register_model
from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig


@register_model("perceiver-ar-imagenet64", model_cls=PerceiverAR, num_parameters=770_094_339)
def perceiver_ar_imagenet64() -> PerceiverARConfig:
    """Perceiver AR ImageNet 64x64 (3.40 bits/dim): 12,416 context, 1,024 latents, 60 layers, 770,094,339 params."""
    # Breakdown: tokens 259x1024; (x, y, channel) tables (66+66+5)x1024; query_proj 1024^2+1024; cross-attend
    # 12,598,272; 60 x 12,596,224 self-attends; final LayerNorm 2,048; logits 1024x259+259.
    return PerceiverARConfig(
        vocab_size=259, max_context_length=12_416, num_latents=1024, num_channels=1024, num_latent_channels=1024,
        num_self_attend_layers=60, num_cross_attend_heads=16, num_self_attend_heads=16,
        cross_attend_widening_factor=4, self_attend_widening_factor=4, dropout_prob=0.1,
        position_encoding="absolute", position_init="random", learnable_position_embeddings=True,
        position_grid=(64, 64, 3),
    )


@register_model("perceiver-ar-debug", model_cls=PerceiverAR, num_parameters=15_555)
def perceiver_ar_debug() -> PerceiverARConfig:
    """Tiny Perceiver AR for tests: 259 byte ids, 32 context, 8 latents, 2 layers, rotary."""
    return PerceiverARConfig(
        vocab_size=259, max_context_length=32, num_latents=8, num_channels=16, num_latent_channels=16,
        num_self_attend_layers=2, num_cross_attend_heads=2, num_self_attend_heads=2,
        cross_attend_widening_factor=2, self_attend_widening_factor=2,
    )


@register_model("perceiver-ar-stdlib-bytes", model_cls=PerceiverAR, num_parameters=2_361_859)
def perceiver_ar_stdlib_bytes() -> PerceiverARConfig:
    """Byte-level Perceiver AR of `perceivers train text`: 1,024 context, 128 latents, 4 x 192, 2,361,859 params."""
    return PerceiverARConfig(
        vocab_size=259, max_context_length=1024, num_latents=128, num_channels=192, num_latent_channels=192,
        num_self_attend_layers=4, num_cross_attend_heads=6, num_self_attend_heads=6,
        cross_attend_widening_factor=4, self_attend_widening_factor=4,
    )


@register_model("perceiver-ar-copy", model_cls=PerceiverAR, num_parameters=686_595)
def perceiver_ar_copy() -> PerceiverARConfig:
    """Model of `perceivers train copy` (the official copy task at length 64): 63 context, 32 latents,
    2 layers x 128, 4 heads, frozen absolute sinusoidal positions (as the official `random_mirrored_*` sweeps),
    686,595 params (8,192 of them the frozen position table)."""
    return PerceiverARConfig(
        vocab_size=259, max_context_length=63, num_latents=32, num_channels=128, num_latent_channels=128,
        num_self_attend_layers=2, num_cross_attend_heads=4, num_self_attend_heads=4,
        cross_attend_widening_factor=4, self_attend_widening_factor=4,
        position_encoding="absolute", position_init="sinusoidal",
    )


@register_model("perceiver-ar-music", model_cls=PerceiverAR, num_parameters=1_042_565)
def perceiver_ar_music() -> PerceiverARConfig:
    """Model of `perceivers train music` (Bach chorales; 133 ids: PAD/EOS/SOS, rest, hold, 128 pitch onsets): 1,024
    context (256 16th-note steps of 4 voices: 16 bars of 4/4), 128 latents, 4 layers x 128, 4 heads, rotary,
    1,042,565 params."""
    return PerceiverARConfig(
        vocab_size=133, max_context_length=1024, num_latents=128, num_channels=128, num_latent_channels=128,
        num_self_attend_layers=4, num_cross_attend_heads=4, num_self_attend_heads=4,
        cross_attend_widening_factor=4, self_attend_widening_factor=4,
    )
