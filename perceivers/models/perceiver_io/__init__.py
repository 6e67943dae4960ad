"""Perceiver (arXiv 2103.03206) and Perceiver IO (arXiv 2107.14795): every released head, one model and config.

``config.py`` (:class:`PerceiverIOConfig`), ``model.py`` (:class:`PerceiverIO`), the task classes it builds
(``language.py``, ``flow.py``, ``multimodal.py``, ``audio.py``), ``variants.py`` (the registered variants) and
``legacy.py`` (older ``config.json`` layouts).
"""

from perceivers.models.perceiver_io import audio, flow, language, multimodal, variants  # noqa: F401  (register)
from perceivers.models.perceiver_io.audio import PerceiverIOAudio
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.models.perceiver_io.flow import PerceiverIOFlow
from perceivers.models.perceiver_io.language import PerceiverIOLanguage
from perceivers.models.perceiver_io.model import PerceiverIO
from perceivers.models.perceiver_io.multimodal import PerceiverIOMultimodal

__all__ = ["PerceiverIO", "PerceiverIOAudio", "PerceiverIOConfig", "PerceiverIOFlow", "PerceiverIOLanguage",
           "PerceiverIOMultimodal"]
