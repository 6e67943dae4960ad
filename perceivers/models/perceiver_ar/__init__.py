"""Perceiver AR (arXiv 2202.07765): causal long-context model; generation lives in :mod:`perceivers.generation`."""

from perceivers.models.perceiver_ar import variants  # noqa: F401  (registers the variants)
from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig

__all__ = ["PerceiverAR", "PerceiverARConfig"]
