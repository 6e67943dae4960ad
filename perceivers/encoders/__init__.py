"""Encoders: inputs ``(B, M, C)`` -> latents ``(B, N, D)`` (the Perceiver encoder)."""

from perceivers.encoders.perceiver import EncoderConfig, PerceiverEncoder

__all__ = ["EncoderConfig", "PerceiverEncoder"]
