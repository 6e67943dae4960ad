"""Raw-waveform Perceiver IO classifier (AudioSet setting of the papers): audio patches + 1-D Fourier
features -> encoder -> one learned query -> ``Linear`` to class logits (sigmoid for multi-label sets)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perceivers.models.perceiver_io.model import PerceiverIO


class PerceiverIOAudio(PerceiverIO, preprocessor="modality"):
    """Waveforms ``(B, S)`` or ``(B, S, 1)`` -> logits ``(B, num_outputs)``.

    Built by ``PerceiverIO(config)`` for a config whose preprocessor is an ``audio`` modality read alone.
    ``input_mask: (B, S / samples_per_patch)`` bool marks real patches (True) of padded clips; padded patches
    are masked keys of the encoder's cross-attention. Any ``S`` that is a multiple of ``samples_per_patch`` is
    accepted (Fourier positions are built over the actual patches, frequencies from ``max_resolution``).
    """

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward``: ``waveform: (B, num_samples)`` standard normal and
        ``input_mask`` with the last patch of the last example padded."""
        p, ref = self.config.preprocessor, self.encoder.latents
        mask = torch.ones(batch_size, p.num_samples // p.samples_per_patch, dtype=torch.bool)
        mask[-1, -1] = mask.shape[1] == 1  # one padded patch, unless that leaves none
        return {"waveform": torch.randn(batch_size, p.num_samples, generator=generator).to(ref),
                "input_mask": mask.to(ref.device)}

    def forward_features(self, waveform: Tensor, input_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``waveform: (B, S)`` or ``(B, S, 1)`` -> latents ``(B, N, D)``."""
        self.preprocessor.check_input(waveform, "waveform")
        self.check_dtype(waveform, "waveform")
        tokens, _ = self.preprocessor(waveform)  # (B, M, C)
        self.check_input_mask(input_mask, tokens, "(B, S / samples_per_patch)")
        return self.encoder(tokens, input_mask)

    def forward(self, waveform: Tensor, input_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``waveform`` -> logits ``(B, num_outputs)``."""
        return self.decoder(self.forward_features(waveform, input_mask))
