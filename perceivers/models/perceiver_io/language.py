"""Byte-level Perceiver IO: text preprocessor -> encoder -> MLM (tied embedding) or classification decoder.

Any length ``L <= max_seq_len`` is accepted (the official colab requires exactly 2,048): the encoder
masks padded keys, and the MLM decoder uses the first ``L`` of its ``max_seq_len`` learned queries.
Because every decoder query attends to the latents independently, this equals decoding the padded
2,048-long input and keeping the first ``L`` outputs (perceiver-io.md §13 item 17).
"""

from __future__ import annotations

from torch import Tensor

from perceivers.decoders.basic import BasicDecoder, ClassificationDecoder
from perceivers.decoders.embedding import EmbeddingDecoder
from perceivers.layers.attention import check_mask
from perceivers.models.base import PerceiverModel
from perceivers.models.perceiver_io.encoder import PerceiverEncoder
from perceivers.models.perceiver_io.language_config import PerceiverIOLanguageConfig
from perceivers.preprocessors.text import TextPreprocessor


class PerceiverIOLanguage(PerceiverModel, model_type="perceiver_io_language"):
    """Token ids ``(B, L)`` -> MLM logits ``(B, L, vocab_size)`` or class logits ``(B, num_outputs)``.

    ``input_mask: (B, L)`` bool (True = real token) masks padded keys in the encoder and, for MLM, is
    also the decoder query mask (official colab: ``query_mask=input_mask``): a padded output position
    gets an attention result of exactly zero. HF transformers ignores the decoder query mask, so its
    padded positions differ; real positions agree (perceiver-io.md §13 item 5).
    """

    config_class = PerceiverIOLanguageConfig

    def __init__(self, config: PerceiverIOLanguageConfig) -> None:
        super().__init__(config)
        c = config
        self.preprocessor = TextPreprocessor(c.preprocessor)
        self.encoder = PerceiverEncoder(c.encoder, input_channels=c.preprocessor.num_channels,
                                        activation=c.activation)
        latent_channels = c.encoder.num_latent_channels
        self.decoder: BasicDecoder
        self.embedding_decoder: EmbeddingDecoder | None = None
        if c.is_mlm:
            self.decoder = BasicDecoder(c.decoder, latent_channels=latent_channels, activation=c.activation)
            self.embedding_decoder = EmbeddingDecoder(c.preprocessor.vocab_size)
        else:
            self.decoder = ClassificationDecoder(c.decoder, latent_channels=latent_channels, activation=c.activation)
        self.init_weights_unless_meta()

    def init_weights(self) -> None:
        """Official initialisation (embedding std 1, tables 0.02, fan-in linears, zero embedding bias)."""
        for module in (self.preprocessor, self.encoder, self.decoder, self.embedding_decoder):
            if module is not None:
                module.init_weights()

    def _check_mask(self, input_ids: Tensor, input_mask: Tensor | None) -> None:
        b, length = input_ids.shape
        check_mask(input_mask, batch=b, num_queries=length, num_keys=length, name="input_mask")
        if input_mask is not None and input_mask.dim() != 2:
            raise ValueError(f"input_mask must have shape (B, L)=({b}, {length}), got {tuple(input_mask.shape)}")

    def forward_features(self, input_ids: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """Encode: ``input_ids: (B, L)``, ``input_mask: (B, L)`` -> latents ``(B, N, D)``."""
        tokens, _ = self.preprocessor(input_ids)  # (B, L, C)
        self._check_mask(input_ids, input_mask)
        return self.encoder(tokens, input_mask)

    def forward_head(self, z: Tensor, input_mask: Tensor | None = None, *, length: int | None = None) -> Tensor:
        """Decode latents ``z: (B, N, D)``: MLM logits for the first ``length`` positions, or class logits."""
        if self.embedding_decoder is None:
            return self.decoder(z)
        length = length if length is not None else input_mask.shape[1]
        query = self.decoder.query_pos(z.shape[0])[:, :length]  # (B, L, C): the first L learned queries
        h = self.decoder(z, query=query, query_mask=input_mask)  # (B, L, C)
        return self.embedding_decoder(h, self.preprocessor.embedding.weight)

    def forward(self, input_ids: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """``input_ids: (B, L)`` int, ``input_mask: (B, L)`` bool -> ``(B, L, V)`` (MLM) or ``(B, K)``."""
        z = self.forward_features(input_ids, input_mask)
        return self.forward_head(z, input_mask, length=input_ids.shape[1])
