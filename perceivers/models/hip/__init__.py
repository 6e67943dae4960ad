"""Hierarchical Perceiver, HiP (arXiv 2202.10890): grouped blocks, the pooled classifier, masked autoencoding."""

from perceivers.models.hip import variants  # noqa: F401  (registers the variants)
from perceivers.models.hip.classifier import HiPClassifier, HiPClassifierConfig
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP

__all__ = ["HiP", "HiPClassifier", "HiPClassifierConfig", "HiPConfig"]
