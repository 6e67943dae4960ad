"""perceivers: the Perceiver family (Perceiver, Perceiver IO, Perceiver AR, HiP) in PyTorch."""

from perceivers.hub import from_pretrained
from perceivers.models.config import DecoderConfig, EncoderConfig, ImagePreprocessorConfig, PerceiverIOConfig
from perceivers.models.flow_config import PerceiverIOFlowConfig
from perceivers.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceivers.models.language_config import PerceiverIOLanguageConfig, TextPreprocessorConfig
from perceivers.models.perceiver_io import PerceiverIO
from perceivers.models.perceiver_io_flow import PerceiverIOFlow
from perceivers.models.perceiver_io_language import PerceiverIOLanguage
from perceivers.registry import create_model, get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "DecoderConfig",
    "EncoderConfig",
    "ImagePreprocessorConfig",
    "PerceiverAR",
    "PerceiverARConfig",
    "PerceiverIO",
    "PerceiverIOConfig",
    "PerceiverIOFlow",
    "PerceiverIOFlowConfig",
    "PerceiverIOLanguage",
    "PerceiverIOLanguageConfig",
    "TextPreprocessorConfig",
    "create_model",
    "from_pretrained",
    "get_config",
    "list_models",
]
