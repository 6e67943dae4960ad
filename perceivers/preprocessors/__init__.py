"""Preprocessors: raw inputs -> tokens ``(B, M, C)`` for an encoder, each beside its config.

Every preprocessor config has a class-level ``type`` tag (written to ``config.json`` by the model config that
holds it) and a ``token_channels`` property (the ``C`` of its tokens); :func:`build_preprocessor` builds the
module a config describes.
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

#: ``type`` tag -> (config class, module class).
PREPROCESSORS: dict[str, tuple[type, type[nn.Module]]] = {
    cfg.type: (cfg, module) for cfg, module in (
        (ImagePreprocessorConfig, ImagePreprocessor),
        (TextPreprocessorConfig, TextPreprocessor),
        (FlowPreprocessorConfig, FlowPreprocessor),
        (ModalityConfig, ModalityPreprocessor),
        (MultimodalPreprocessorConfig, MultimodalPreprocessor),
    )
}


def build_preprocessor(config: AnyPreprocessorConfig) -> nn.Module:
    """The preprocessor module ``config`` describes (chosen by its ``type`` tag)."""
    entry = PREPROCESSORS.get(getattr(config, "type", None))
    if entry is None or not isinstance(config, entry[0]):
        raise TypeError(f"not a preprocessor config: {type(config).__name__} (known: "
                        f"{', '.join(c.__name__ for c, _ in PREPROCESSORS.values())})")
    return entry[1](config)


__all__ = [
    "PREPROCESSORS", "AnyPreprocessorConfig", "FlowPreprocessor", "FlowPreprocessorConfig", "ImagePreprocessor",
    "ImagePreprocessorConfig", "ModalityConfig", "ModalityPreprocessor", "MultimodalPreprocessor",
    "MultimodalPreprocessorConfig", "TextPreprocessor", "TextPreprocessorConfig", "build_preprocessor",
]
