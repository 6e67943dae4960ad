"""Preprocessors: raw inputs -> tokens ``(B, M, C)`` for an encoder, each beside its config.

Every preprocessor config has a class-level ``type`` tag (written to ``config.json`` by the model config that
holds it; :data:`PREPROCESSOR_CONFIGS` maps tags to classes) and a ``token_channels`` property (the ``C`` of its
tokens); :func:`build_preprocessor` builds the module a config describes.
"""

from __future__ import annotations

from torch import nn

from perceivers.preprocessors.flow import FlowPreprocessor, FlowPreprocessorConfig
from perceivers.preprocessors.image import ImagePreprocessor, ImagePreprocessorConfig
from perceivers.preprocessors.modality import ModalityConfig, ModalityPreprocessor
from perceivers.preprocessors.multimodal import (
    MultimodalPreprocessor,
    MultimodalPreprocessorConfig,
)
from perceivers.preprocessors.text import TextPreprocessor, TextPreprocessorConfig

AnyPreprocessorConfig = (ImagePreprocessorConfig | TextPreprocessorConfig | FlowPreprocessorConfig | ModalityConfig
                      | MultimodalPreprocessorConfig)

#: ``type`` tag -> config class.
PREPROCESSOR_CONFIGS: dict[str, type] = {cfg.type: cfg for cfg in (
    ImagePreprocessorConfig, TextPreprocessorConfig, FlowPreprocessorConfig, ModalityConfig,
    MultimodalPreprocessorConfig)}

_MODULES: dict[type, type[nn.Module]] = {
    ImagePreprocessorConfig: ImagePreprocessor, TextPreprocessorConfig: TextPreprocessor,
    FlowPreprocessorConfig: FlowPreprocessor, ModalityConfig: ModalityPreprocessor,
    MultimodalPreprocessorConfig: MultimodalPreprocessor,
}


def build_preprocessor(config: AnyPreprocessorConfig) -> nn.Module:
    """The preprocessor module ``config`` describes (one module class per config class)."""
    module = _MODULES.get(type(config))
    if module is None:
        raise TypeError(f"not a preprocessor config: {type(config).__name__} (known: "
                        f"{', '.join(c.__name__ for c in PREPROCESSOR_CONFIGS.values())})")
    return module(config)


__all__ = [
    "PREPROCESSOR_CONFIGS", "AnyPreprocessorConfig", "FlowPreprocessor", "FlowPreprocessorConfig", "ImagePreprocessor",
    "ImagePreprocessorConfig", "ModalityConfig", "ModalityPreprocessor", "MultimodalPreprocessor",
    "MultimodalPreprocessorConfig", "TextPreprocessor", "TextPreprocessorConfig", "build_preprocessor",
]
