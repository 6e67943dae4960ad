"""Registered byte-level Perceiver IO language variants with their exact parameter counts.

The MLM configuration is the released ``language_perceiver_io_bytes`` checkpoint (official MLM colab,
HF ``deepmind/language-perceiver``; perceiver-io.md §10.2): 262 byte ids, 2,048 positions x 768,
256 latents x 1,280, 26 self-attends, 8 heads, qk 256.
"""

from __future__ import annotations

from perceivers.core.registry import register_model
from perceivers.models.perceiver_io.config import DecoderConfig, EncoderConfig
from perceivers.models.perceiver_io.language import PerceiverIOLanguage
from perceivers.models.perceiver_io.language_config import (
    PerceiverIOLanguageConfig,
    TextPreprocessorConfig,
)

_TEXT = TextPreprocessorConfig(vocab_size=262, num_channels=768, max_seq_len=2048)
_ENCODER = EncoderConfig(num_latents=256, num_latent_channels=1280, num_blocks=1, num_self_attends_per_block=26,
                         num_cross_attend_heads=8, num_self_attend_heads=8, qk_channels=256, v_channels=1280)


@register_model("perceiver-io-language-mlm", model_cls=PerceiverIOLanguage, num_parameters=201_108_230)
def perceiver_io_language_mlm() -> PerceiverIOLanguageConfig:
    """Perceiver IO masked byte LM (released weights): 2,048 bytes, 256 x 1,280 latents, 26 layers, 201,108,230."""
    # Breakdown: embed 262x768; input pos 2048x768; latents 256x1280; cross-attend 6,434,816; 26 x 7,219,712
    # self-attends; queries 2048x768; decoder cross-attend 3,286,016; embedding-decoder bias 262.
    decoder = DecoderConfig(type="basic", num_outputs=262, output_index_dims=(2048,), position_encoding="trainable",
                            num_query_channels=768, num_heads=8, qk_channels=256, v_channels=768,
                            use_query_residual=False, final_project=False)
    return PerceiverIOLanguageConfig(preprocessor=_TEXT, encoder=_ENCODER, decoder=decoder)


@register_model("perceiver-io-language-classifier", model_cls=PerceiverIOLanguage, num_parameters=206_098_690)
def perceiver_io_language_classifier() -> PerceiverIOLanguageConfig:
    """Byte-level sequence classifier on the MLM encoder (GLUE setting), 2 classes: 206,098,690 params."""
    # The encoder equals the MLM's; the decoder is one learned 1,280-wide query, a 1-head cross-attend
    # (qk = v = 1,280) with query residual, and Linear(1280 -> num_outputs). No released weights.
    decoder = DecoderConfig(type="classification", num_outputs=2, num_query_channels=1280, use_query_residual=True)
    return PerceiverIOLanguageConfig(preprocessor=_TEXT, encoder=_ENCODER, decoder=decoder)


@register_model("perceiver-io-language-debug", model_cls=PerceiverIOLanguage, num_parameters=24_518)
def perceiver_io_language_debug() -> PerceiverIOLanguageConfig:
    """Tiny masked byte LM for tests: 64 positions x 16, 8 latents x 32, 2 layers, 24,518 params."""
    text = TextPreprocessorConfig(vocab_size=262, num_channels=16, max_seq_len=64)
    encoder = EncoderConfig(num_latents=8, num_latent_channels=32, num_blocks=1, num_self_attends_per_block=2,
                            num_cross_attend_heads=2, num_self_attend_heads=2, qk_channels=16, v_channels=32)
    decoder = DecoderConfig(type="basic", num_outputs=262, output_index_dims=(64,), position_encoding="trainable",
                            num_query_channels=16, num_heads=2, qk_channels=16, v_channels=16,
                            use_query_residual=False, final_project=False)
    return PerceiverIOLanguageConfig(preprocessor=text, encoder=encoder, decoder=decoder)
