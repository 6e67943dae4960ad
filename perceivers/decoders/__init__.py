"""Decoders: latents ``(B, N, D)`` -> outputs, each beside its config.

Every decoder config has a ``type`` tag (written to ``config.json`` by the model config that holds it;
:class:`DecoderConfig` carries three: ``classification``, ``projection``, ``basic``; :data:`DECODER_CONFIGS` maps
tags to classes); :func:`build_decoder` builds the module a config describes.
"""

from __future__ import annotations

from torch import nn

from perceivers.decoders.basic import (
    DECODER_TYPES,
    BasicDecoder,
    ClassificationDecoder,
    DecoderConfig,
    ProjectionDecoder,
    check_decoder_heads,
)
from perceivers.decoders.embedding import EmbeddingDecoder
from perceivers.decoders.flow import FlowDecoder, FlowDecoderConfig
from perceivers.decoders.multimodal import MultimodalDecoder, MultimodalDecoderConfig
from perceivers.preprocessors import (
    AnyPreprocessorConfig,
    FlowPreprocessorConfig,
    MultimodalPreprocessorConfig,
)

AnyDecoderConfig = DecoderConfig | FlowDecoderConfig | MultimodalDecoderConfig

#: ``type`` tag -> config class.
DECODER_CONFIGS: dict[str, type] = {
    **{tag: DecoderConfig for tag in DECODER_TYPES},
    FlowDecoderConfig.type: FlowDecoderConfig,
    MultimodalDecoderConfig.type: MultimodalDecoderConfig,
}


def build_decoder(config: AnyDecoderConfig, *, latent_channels: int, activation: str = "gelu_tanh",
                  preprocessor: AnyPreprocessorConfig | None = None, feature_channels: int = 0) -> nn.Module:
    """The decoder module ``config`` describes (chosen by its ``type`` tag), reading latents of
    ``latent_channels``. ``preprocessor``: the model's preprocessor config (the flow decoder's queries are its
    tokens; the multimodal decoder queries its modalities). ``feature_channels``: channels of the preprocessed
    input without positions (a basic decoder with ``concat_preprocessed_input``)."""
    if not isinstance(config, (DecoderConfig, FlowDecoderConfig, MultimodalDecoderConfig)):
        raise TypeError(f"not a decoder config: {type(config).__name__} (known: DecoderConfig, FlowDecoderConfig, "
                        f"MultimodalDecoderConfig)")
    tag = config.type
    if tag == "classification":
        return ClassificationDecoder(config, latent_channels=latent_channels, activation=activation)
    if tag == "projection":
        return ProjectionDecoder(config, latent_channels=latent_channels)
    if tag == "basic":
        return BasicDecoder(config, latent_channels=latent_channels, input_channels=feature_channels,
                            activation=activation)
    if tag == "flow":
        if not isinstance(preprocessor, FlowPreprocessorConfig):
            raise ValueError("a flow decoder queries with the tokens of a flow preprocessor: pass its config")
        return FlowDecoder(config, query_channels=preprocessor.token_channels, latent_channels=latent_channels,
                           activation=activation)
    if not isinstance(preprocessor, MultimodalPreprocessorConfig):
        raise ValueError("a multimodal decoder queries the modalities of a multimodal preprocessor: pass its config")
    return MultimodalDecoder(preprocessor.modalities, config, latent_channels=latent_channels, activation=activation)


__all__ = [
    "DECODER_CONFIGS", "AnyDecoderConfig", "BasicDecoder", "ClassificationDecoder", "DecoderConfig",
    "EmbeddingDecoder", "FlowDecoder", "FlowDecoderConfig", "MultimodalDecoder", "MultimodalDecoderConfig",
    "ProjectionDecoder", "build_decoder", "check_decoder_heads",
]
