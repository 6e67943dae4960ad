"""Registered Perceiver / Perceiver IO variants with their exact parameter counts.

Counts exclude BatchNorm running statistics (buffers). ImageNet configurations follow the official
``imagenet_classification.ipynb``; the original Perceiver follows the Perceiver paper (Tab. 6/7).
"""

from __future__ import annotations

from perceivers.core.registry import register_model
from perceivers.models.perceiver_io.config import (
    DecoderConfig,
    EncoderConfig,
    ImagePreprocessorConfig,
    PerceiverIOConfig,
)
from perceivers.models.perceiver_io.model import PerceiverIO

_IMAGENET_ENCODER = EncoderConfig(num_latents=512, num_latent_channels=1024, num_blocks=8,
                                  num_self_attends_per_block=6, num_cross_attend_heads=1, num_self_attend_heads=8)


def _imagenet_decoder(use_query_residual: bool) -> DecoderConfig:
    return DecoderConfig(type="classification", num_outputs=1000, num_query_channels=1024,
                         use_query_residual=use_query_residual)


@register_model("perceiver-io-imagenet-learned", model_cls=PerceiverIO, num_parameters=62_255_848)
def perceiver_io_imagenet_learned() -> PerceiverIOConfig:
    """Perceiver IO ImageNet, conv1x1 3->256 + learned 50,176x256 positions projected to 256 (72.7% top-1)."""
    prep = ImagePreprocessorConfig(prep_type="conv1x1", spatial_downsample=1, num_channels=256,
                                   position_encoding="trainable", trainable_pos_channels=256, project_pos_dim=256)
    # Official decoder has no query residual here (HF transformers turns it on).
    return PerceiverIOConfig(preprocessor=prep, encoder=_IMAGENET_ENCODER, decoder=_imagenet_decoder(False))


@register_model("perceiver-io-imagenet-fourier", model_cls=PerceiverIO, num_parameters=48_440_627)
def perceiver_io_imagenet_fourier() -> PerceiverIOConfig:
    """Perceiver IO ImageNet, raw RGB + 2-D Fourier features (64 bands, max res 224) (79.0% top-1)."""
    prep = ImagePreprocessorConfig(prep_type="pixels", spatial_downsample=1, position_encoding="fourier",
                                   num_bands=64, max_resolution=(224, 224))
    return PerceiverIOConfig(preprocessor=prep, encoder=_IMAGENET_ENCODER, decoder=_imagenet_decoder(True))


@register_model("perceiver-io-imagenet-conv", model_cls=PerceiverIO, num_parameters=48_646_522)
def perceiver_io_imagenet_conv() -> PerceiverIOConfig:
    """Perceiver IO ImageNet, conv+BN+maxpool to 56x56x64 + 2-D Fourier features (82.1% top-1)."""
    prep = ImagePreprocessorConfig(prep_type="conv", spatial_downsample=4, num_channels=64,
                                   position_encoding="fourier", num_bands=64, max_resolution=(56, 56))
    return PerceiverIOConfig(preprocessor=prep, encoder=_IMAGENET_ENCODER, decoder=_imagenet_decoder(True))


@register_model("perceiver-imagenet", model_cls=PerceiverIO, num_parameters=44_912_254)
def perceiver_imagenet() -> PerceiverIOConfig:
    """Original Perceiver ImageNet (78.0% top-1): 8 interleaved cross-attends (2..8 shared), average+project."""
    prep = ImagePreprocessorConfig(prep_type="pixels", spatial_downsample=1, position_encoding="fourier",
                                   num_bands=64, max_resolution=(224, 224))
    encoder = _IMAGENET_ENCODER.replace(layout="interleaved")
    decoder = DecoderConfig(type="projection", num_outputs=1000)
    return PerceiverIOConfig(preprocessor=prep, encoder=encoder, decoder=decoder)


@register_model("perceiver-io-digits", model_cls=PerceiverIO, num_parameters=460_828)
def perceiver_io_digits() -> PerceiverIOConfig:
    """Small Perceiver IO for 8x8 digits: raw pixels embedded by a 1x1 conv + 2-D Fourier features, 10 classes."""
    # A 1x1 conv (the official conv1x1 preprocessor) gives each raw pixel value 32 channels next to
    # the 34 Fourier channels; with a single intensity channel ('pixels') the per-token LayerNorm of
    # the cross-attention dilutes the pixel among the positions and training is slower and less stable.
    prep = ImagePreprocessorConfig(image_size=(8, 8), in_channels=1, prep_type="conv1x1", spatial_downsample=1,
                                   num_channels=32, position_encoding="fourier", num_bands=8, max_resolution=(8, 8))
    encoder = EncoderConfig(num_latents=16, num_latent_channels=128, num_blocks=2, num_self_attends_per_block=2,
                            num_cross_attend_heads=1, num_self_attend_heads=4, self_attend_widening_factor=2,
                            cross_attend_widening_factor=2, dropout_prob=0.1)
    decoder = DecoderConfig(type="classification", num_outputs=10, num_query_channels=128, use_query_residual=True)
    return PerceiverIOConfig(preprocessor=prep, encoder=encoder, decoder=decoder)
