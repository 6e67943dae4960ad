"""Generation: ``generate(model, prompt, ...)``, fixed-size KV caches, sampling filters, beam search and the CPU
decode layout; models only accept a cache."""

from perceivers.generation.decoder import CachedDecoder, GenerationOutput
from perceivers.generation.generate import generate
from perceivers.generation.kv_cache import LayerKVCache, PerceiverARCache
from perceivers.generation.sampling import (
    process_logits,
    sample_next,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "CachedDecoder",
    "GenerationOutput",
    "LayerKVCache",
    "PerceiverARCache",
    "generate",
    "process_logits",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]
