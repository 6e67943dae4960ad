"""Frozen, validated configuration of the byte-level Perceiver IO language models.

:class:`TextPreprocessorConfig` describes the official text input (``hk.Embed(262, 768)`` plus a learned
``2048 x 768`` position table, *added*); :class:`PerceiverIOLanguageConfig` joins it with the shared
:class:`~perceivers.models.perceiver_io.config.EncoderConfig` and :class:`~perceivers.models.perceiver_io.config.DecoderConfig`:

- ``decoder.type == "basic"``: masked language modelling (official MLM colab). Trainable queries over
  ``(max_seq_len,)`` without a final projection; logits come from an embedding decoder tied to the byte
  embedding with its own bias (``vocab_size``).
- ``decoder.type == "classification"``: one learned query and a ``Linear`` to ``num_outputs`` classes
  (HF ``PerceiverForSequenceClassification``, the GLUE setting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from perceivers.layers.blocks import ACTIVATIONS
from perceivers.models.perceiver_io.config import (
    ConfigBase,
    DecoderConfig,
    EncoderConfig,
    check_choice,
    check_divisible,
    check_int,
    check_scale,
    fail,
)


@dataclass(frozen=True, kw_only=True)
class TextPreprocessorConfig(ConfigBase):
    """Byte embedding ``(vocab_size, num_channels)`` + learned positions ``(max_seq_len, num_channels)``, added.

    ``embed_init_scale``: std of the truncated-normal byte embedding (Haiku ``hk.Embed`` default 1.0);
    ``pos_init_scale``: std of the position table (official ``TrainablePositionEncoding``, 0.02).
    """

    vocab_size: int = 262
    num_channels: int = 768
    max_seq_len: int = 2048
    embed_init_scale: float = 1.0
    pos_init_scale: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_channels", "max_seq_len"):
            check_int(name, getattr(self, name))
        check_scale("embed_init_scale", self.embed_init_scale)
        check_scale("pos_init_scale", self.pos_init_scale)


@dataclass(frozen=True, kw_only=True)
class PerceiverIOLanguageConfig(ConfigBase):
    """A byte-level Perceiver IO: text preprocessor, encoder, and an MLM or classification decoder."""

    _nested: ClassVar[dict[str, type]] = {
        "preprocessor": TextPreprocessorConfig, "encoder": EncoderConfig, "decoder": DecoderConfig,
    }

    preprocessor: TextPreprocessorConfig = field(default_factory=TextPreprocessorConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        self._coerce_nested()
        check_choice("activation", self.activation, ACTIVATIONS)
        prep, enc, dec = self.preprocessor, self.encoder, self.decoder
        if enc.layout != "io":
            fail("encoder.layout", enc.layout, "'io' for a language model")
        qk, v = enc.cross_attention_channels(prep.num_channels)
        heads = enc.num_cross_attend_heads
        check_divisible("encoder cross-attention qk_channels", qk, "num_cross_attend_heads", heads)
        check_divisible("encoder cross-attention v_channels", v, "num_cross_attend_heads", heads)
        check_choice("decoder.type", dec.type, ("basic", "classification"))
        dqk = dec.qk_channels or enc.num_latent_channels
        check_divisible("decoder qk_channels", dqk, "decoder num_heads", dec.num_heads)
        check_divisible("decoder v_channels", dec.v_channels or dqk, "decoder num_heads", dec.num_heads)
        if dec.type == "basic":
            self._check_mlm_decoder()

    def _check_mlm_decoder(self) -> None:
        prep, dec = self.preprocessor, self.decoder
        if dec.position_encoding != "trainable" or dec.concat_preprocessed_input:
            fail("decoder.position_encoding", dec.position_encoding,
                  "'trainable' queries (and concat_preprocessed_input=False) for the MLM decoder")
        if dec.output_index_dims != (prep.max_seq_len,):
            fail("decoder.output_index_dims", dec.output_index_dims,
                  f"({prep.max_seq_len},), one query per position of preprocessor.max_seq_len")
        if dec.final_project:
            fail("decoder.final_project", True, "False: MLM logits come from the tied embedding decoder")
        if dec.num_query_channels != prep.num_channels:
            fail("decoder.num_query_channels", dec.num_query_channels,
                  f"preprocessor.num_channels={prep.num_channels} (the output is decoded with the byte embedding)")

    @property
    def is_mlm(self) -> bool:
        return self.decoder.type == "basic"
