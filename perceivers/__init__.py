"""perceivers: the Perceiver family (Perceiver, Perceiver IO, Perceiver AR, HiP) in PyTorch.

``from_pretrained`` takes a local folder or a Hugging Face Hub id, in our format or transformers' (converted on
the fly): :mod:`perceivers.converters.hub_fetch`.
"""

from perceivers.converters.hub_fetch import from_pretrained
from perceivers.decoders import (
    DecoderConfig,
    FlowDecoderConfig,
    MultimodalDecoderConfig,
)
from perceivers.encoders import EncoderConfig
from perceivers.models import create_model, get_config, list_models
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

__version__ = "0.1.0"

__all__ = [
    "DecoderConfig",
    "EncoderConfig",
    "FlowDecoderConfig",
    "FlowPreprocessorConfig",
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
    "create_model",
    "from_pretrained",
    "get_config",
    "list_models",
]
