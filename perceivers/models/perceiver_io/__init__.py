"""Perceiver (arXiv 2103.03206) and Perceiver IO (arXiv 2107.14795): every released head."""

from perceivers.models.perceiver_io import (  # noqa: F401  (register the variants)
    flow_variants,
    language_variants,
    multimodal_variants,
    variants,
)
