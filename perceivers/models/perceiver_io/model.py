"""Perceiver / Perceiver IO model: preprocessor -> encoder -> decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceivers.decoders.basic import (
    BasicDecoder,
    ClassificationDecoder,
    ProjectionDecoder,
)
from perceivers.layers.attention import check_mask
from perceivers.models.base import PerceiverModel
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.models.perceiver_io.encoder import PerceiverEncoder
from perceivers.preprocessors.image import ImagePreprocessor


class PerceiverIO(PerceiverModel, model_type="perceiver_io"):
    """A Perceiver IO (or original Perceiver, ``encoder.layout='interleaved'``) model.

    Inputs are NCHW float images ``(B, C, H, W)`` when ``config.preprocessor`` is set, else tokens
    ``(B, M, input_channels)``. Outputs: ``(B, num_outputs)`` for classification / projection
    decoders, ``(B, O, num_outputs)`` for the basic decoder.

    Construction declares parameters; :meth:`init_weights` applies the official initialisation and
    is called by ``__init__`` unless the parameters live on the meta device.
    """

    config_class = PerceiverIOConfig

    def __init__(self, config: PerceiverIOConfig) -> None:
        super().__init__(config)
        c = config
        self.preprocessor = ImagePreprocessor(c.preprocessor) if c.preprocessor is not None else None
        self.encoder = PerceiverEncoder(c.encoder, input_channels=c.input_channels, activation=c.activation)
        d = c.decoder
        self.decoder: nn.Module
        latent_channels = c.encoder.num_latent_channels
        if d.type == "classification":
            self.decoder = ClassificationDecoder(d, latent_channels=latent_channels, activation=c.activation)
        elif d.type == "projection":
            self.decoder = ProjectionDecoder(d, latent_channels=latent_channels)
        else:
            self.decoder = BasicDecoder(d, latent_channels=latent_channels, input_channels=c.preprocessed_channels,
                                        activation=c.activation)
        self.init_weights_unless_meta()

    def init_weights(self) -> None:
        """Official initialisation (fan-in truncated normal linears, 0.02 latents and tables)."""
        for module in (self.preprocessor, self.encoder, self.decoder):
            if module is not None:
                module.init_weights()

    def _check_dtype(self, inputs: Tensor, name: str) -> None:
        """Floating inputs must match the parameters' dtype (autocast handles mixed dtypes itself)."""
        dtype = self.encoder.latents.dtype
        if inputs.dtype != dtype and not torch.is_autocast_enabled(inputs.device.type):
            raise TypeError(f"{name} have dtype {inputs.dtype} but the model parameters are {dtype}; "
                            f"convert the inputs (x.to({dtype})) or the model")

    def _tokens(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        if self.preprocessor is not None:
            self.preprocessor.check_input(inputs)
            self._check_dtype(inputs, "images")
            tokens, feats, _ = self.preprocessor(inputs)
            return tokens, feats
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if not inputs.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
        self._check_dtype(inputs, "inputs")
        if inputs.dim() != 3 or inputs.shape[-1] != self.config.input_channels:
            raise ValueError(f"inputs must have shape (B, M, {self.config.input_channels}), got {tuple(inputs.shape)}")
        if inputs.shape[0] == 0 or inputs.shape[1] == 0:
            raise ValueError(f"inputs must be non-empty, got shape {tuple(inputs.shape)}")
        return inputs, inputs

    def forward_features(self, inputs: Tensor, input_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode: ``-> (latents (B, N, D), preprocessed input without positions (B, M, C_feat))``."""
        tokens, feats = self._tokens(inputs)
        check_mask(input_mask, batch=tokens.shape[0], num_queries=self.config.encoder.num_latents,
                   num_keys=tokens.shape[1], name="input_mask")
        if input_mask is not None and input_mask.dim() != 2:
            raise ValueError(f"input_mask must have shape (B, M)=({tokens.shape[0]}, {tokens.shape[1]}), "
                             f"got {tuple(input_mask.shape)}")
        return self.encoder(tokens, input_mask), feats

    def forward(self, inputs: Tensor, input_mask: Tensor | None = None, *, query_mask: Tensor | None = None,
                subsampled_output_points: Tensor | None = None) -> Tensor:
        """``inputs`` -> logits / outputs (see class docstring).

        ``input_mask: (B, M)`` bool marks real input tokens (after preprocessing); ``query_mask:
        (B, O)`` and ``subsampled_output_points`` apply to the basic decoder only.
        """
        if self.config.decoder.type != "basic" and (query_mask is not None or subsampled_output_points is not None):
            raise ValueError(f"query_mask and subsampled_output_points need a 'basic' decoder, "
                             f"this model has a {self.config.decoder.type!r} decoder")
        z, feats = self.forward_features(inputs, input_mask)
        if isinstance(self.decoder, BasicDecoder) and not isinstance(self.decoder, ClassificationDecoder):
            if self.config.decoder.concat_preprocessed_input and feats.shape[1] != self.decoder.num_queries:
                raise ValueError(f"concat_preprocessed_input needs one query per input token: "
                                 f"{feats.shape[1]} tokens vs {self.decoder.num_queries} output positions")
            return self.decoder(z, query_mask=query_mask, inputs_without_pos=feats,
                                subsampled_points=subsampled_output_points)
        return self.decoder(z)
