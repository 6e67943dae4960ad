"""perceivers: the Perceiver family (Perceiver, Perceiver IO, Perceiver AR, HiP) in PyTorch."""

from perceivers.models import create_model, from_pretrained, get_config, list_models
from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig
from perceivers.models.perceiver_io.config import (
    DecoderConfig,
    EncoderConfig,
    ImagePreprocessorConfig,
    PerceiverIOConfig,
)
from perceivers.models.perceiver_io.flow import PerceiverIOFlow
from perceivers.models.perceiver_io.flow_config import PerceiverIOFlowConfig
from perceivers.models.perceiver_io.language import PerceiverIOLanguage
from perceivers.models.perceiver_io.language_config import (
    PerceiverIOLanguageConfig,
    TextPreprocessorConfig,
)
from perceivers.models.perceiver_io.model import PerceiverIO

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
