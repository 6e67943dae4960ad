"""perceivers: the Perceiver family (Perceiver, Perceiver IO, Perceiver AR, HiP) in PyTorch.

``from_pretrained`` takes a local folder, a Hugging Face Hub id (our format or transformers', converted on the
fly) or an official Perceiver IO parameter file: :mod:`perceivers.converters.hub_fetch`.

The names below are imported on first use (PEP 562), so ``import perceivers`` and the command line start without
importing torch; a Ctrl-C while the command line starts is then one line, not a traceback from inside an import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    "from_pretrained": "perceivers.converters.hub_fetch",
    "DecoderConfig": "perceivers.decoders",
    "FlowDecoderConfig": "perceivers.decoders",
    "MultimodalDecoderConfig": "perceivers.decoders",
    "EncoderConfig": "perceivers.encoders",
    "attention_maps": "perceivers.models.attention_maps",
    "create_model": "perceivers.models",
    "get_config": "perceivers.models",
    "list_models": "perceivers.models",
    "PerceiverAR": "perceivers.models.perceiver_ar.model",
    "PerceiverARConfig": "perceivers.models.perceiver_ar.model",
    "HiP": "perceivers.models.hip.model",
    "HiPConfig": "perceivers.models.hip.config",
    "PerceiverIO": "perceivers.models.perceiver_io",
    "PerceiverIOAudio": "perceivers.models.perceiver_io",
    "PerceiverIOConfig": "perceivers.models.perceiver_io",
    "PerceiverIOFlow": "perceivers.models.perceiver_io",
    "PerceiverIOLanguage": "perceivers.models.perceiver_io",
    "PerceiverIOMultimodal": "perceivers.models.perceiver_io",
    "FlowPreprocessorConfig": "perceivers.preprocessors",
    "ImagePreprocessorConfig": "perceivers.preprocessors",
    "ModalityConfig": "perceivers.preprocessors",
    "MultimodalPreprocessorConfig": "perceivers.preprocessors",
    "TextPreprocessorConfig": "perceivers.preprocessors",
}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from perceivers.converters.hub_fetch import from_pretrained
    from perceivers.decoders import (
        DecoderConfig,
        FlowDecoderConfig,
        MultimodalDecoderConfig,
    )
    from perceivers.encoders import EncoderConfig
    from perceivers.models import create_model, get_config, list_models
    from perceivers.models.attention_maps import attention_maps
    from perceivers.models.hip.config import HiPConfig
    from perceivers.models.hip.model import HiP
    from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig
    from perceivers.models.perceiver_io import (
        PerceiverIO,
        PerceiverIOAudio,
        PerceiverIOConfig,
        PerceiverIOFlow,
        PerceiverIOLanguage,
        PerceiverIOMultimodal,
    )
    from perceivers.preprocessors import (
        FlowPreprocessorConfig,
        ImagePreprocessorConfig,
        ModalityConfig,
        MultimodalPreprocessorConfig,
        TextPreprocessorConfig,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'perceivers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "DecoderConfig",
    "EncoderConfig",
    "FlowDecoderConfig",
    "FlowPreprocessorConfig",
    "HiP",
    "HiPConfig",
    "ImagePreprocessorConfig",
    "ModalityConfig",
    "MultimodalDecoderConfig",
    "MultimodalPreprocessorConfig",
    "PerceiverAR",
    "PerceiverARConfig",
    "PerceiverIO",
    "PerceiverIOAudio",
    "PerceiverIOConfig",
    "PerceiverIOFlow",
    "PerceiverIOLanguage",
    "PerceiverIOMultimodal",
    "TextPreprocessorConfig",
    "attention_maps",
    "create_model",
    "from_pretrained",
    "get_config",
    "list_models",
]
