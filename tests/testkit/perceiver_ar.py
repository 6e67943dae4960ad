"""Tiny Perceiver AR models with non-trivial weights, shared by the Perceiver AR and generation tests."""

from __future__ import annotations

import torch

from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig


def tiny_ar(**overrides) -> PerceiverARConfig:
    """Cross heads of 8 channels (4 rotated), latent heads of 4 channels (2 rotated), wavelengths 1..24."""
    base = dict(vocab_size=11, max_context_length=24, num_latents=6, num_channels=16, num_latent_channels=12,
                num_self_attend_layers=2, num_cross_attend_heads=2, num_self_attend_heads=3,
                cross_attend_widening_factor=2, self_attend_widening_factor=2)
    base.update(overrides)
    return PerceiverARConfig(**base)


def randomized(model: PerceiverAR, seed: int = 0) -> PerceiverAR:
    """Official init, then non-trivial LayerNorm affines, biases and logits (zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name == "logits.weight":
                p.copy_(0.3 * noise)
    return model.eval()


def make(position: str = "rotary", seed: int = 0, **overrides) -> PerceiverAR:
    return randomized(PerceiverAR(tiny_ar(position_encoding=position, **overrides)), seed)
