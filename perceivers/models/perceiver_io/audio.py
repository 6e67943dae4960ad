"""Raw-waveform Perceiver IO classifier (AudioSet setting of the papers): audio patches + 1-D Fourier
features -> encoder -> one learned query -> ``Linear`` to class logits (sigmoid for multi-label sets)."""

from __future__ import annotations

import torch
from torch import Tensor

from perceivers.decoders.basic import ClassificationDecoder
from perceivers.layers.attention import check_mask
from perceivers.models.base import PerceiverModel
from perceivers.models.perceiver_io.encoder import PerceiverEncoder
from perceivers.models.perceiver_io.multimodal_config import PerceiverIOAudioConfig
from perceivers.preprocessors.multimodal import ModalityPreprocessor


class PerceiverIOAudio(PerceiverModel, model_type="perceiver_io_audio"):
    """Waveforms ``(B, S)`` or ``(B, S, 1)`` -> logits ``(B, num_outputs)``.

    ``input_mask: (B, S / samples_per_patch)`` bool marks real patches (True) of padded clips; padded
    patches are masked keys of the encoder's cross-attention. Any ``S`` that is a multiple of
    ``samples_per_patch`` is accepted (Fourier positions are built over the actual patches, frequencies
    from ``max_resolution``).
    """

    config_class = PerceiverIOAudioConfig

    def __init__(self, config: PerceiverIOAudioConfig) -> None:
        super().__init__(config)
        c = config
        self.preprocessor = ModalityPreprocessor(c.preprocessor)
        self.encoder = PerceiverEncoder(c.encoder, input_channels=c.preprocessor.input_channels,
                                        activation=c.activation)
        self.decoder = ClassificationDecoder(c.decoder, latent_channels=c.encoder.num_latent_channels,
                                             activation=c.activation)
        self.init_weights_unless_meta()

    def init_weights(self) -> None:
        self.encoder.init_weights()
        self.decoder.init_weights()

    def forward_features(self, waveform: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """``waveform: (B, S)`` or ``(B, S, 1)`` -> latents ``(B, N, D)``."""
        self.preprocessor.check_input(waveform, "waveform")
        dtype = self.encoder.latents.dtype
        if waveform.dtype != dtype and not torch.is_autocast_enabled(waveform.device.type):
            raise TypeError(f"waveform has dtype {waveform.dtype} but the model parameters are {dtype}")
        tokens, _ = self.preprocessor(waveform)  # (B, M, C)
        b, m = tokens.shape[:2]
        check_mask(input_mask, batch=b, num_queries=self.config.encoder.num_latents, num_keys=m, name="input_mask")
        if input_mask is not None and input_mask.dim() != 2:
            raise ValueError(f"input_mask must have shape (B, S / samples_per_patch)=({b}, {m}), "
                             f"got {tuple(input_mask.shape)}")
        return self.encoder(tokens, input_mask)

    def forward(self, waveform: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """``waveform`` -> logits ``(B, num_outputs)``."""
        return self.decoder(self.forward_features(waveform, input_mask))
