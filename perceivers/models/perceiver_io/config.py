"""The one Perceiver IO config: a preprocessor, an encoder and a decoder, chosen by tagged sub-configs.

Each sub-config lives beside its component (:mod:`perceivers.preprocessors`, :mod:`perceivers.encoders`,
:mod:`perceivers.decoders`) and has a ``type`` tag; ``config.json`` stores the tag in each sub-config's object::

    {"preprocessor": {"type": "image", ...} | null, "input_channels": 261,
     "encoder": {...}, "decoder": {"type": "classification", ...}, "activation": "gelu_tanh"}

The tasks are pairs of tags (preprocessor -> decoders it accepts):

- none (tokens ``(B, M, input_channels)``) or ``image``: ``classification``, ``projection``, ``basic``
  (original Perceiver: ``encoder.layout='interleaved'`` with ``projection``);
- ``text``: ``basic`` (masked language model: logits from the byte embedding, tied) or ``classification``;
- ``flow``: ``flow`` (the queries are the input tokens);
- ``modality`` (one modality read alone: raw audio): ``classification``;
- ``multimodal``: ``multimodal`` (one output layer per modality follows the decoder).

Folders saved before this layout (five model types, untagged sub-configs) are translated on load by
:func:`perceivers.models.perceiver_io.legacy.upgrade_layout`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from perceivers.core.validation import ConfigBase, check_choice, check_int, fail
from perceivers.decoders import (
    DECODER_CONFIGS,
    AnyDecoderConfig,
    DecoderConfig,
    check_decoder_heads,
)
from perceivers.encoders import EncoderConfig
from perceivers.layers.blocks import ACTIVATIONS
from perceivers.models.perceiver_io.legacy import upgrade_layout
from perceivers.preprocessors import (
    PREPROCESSOR_CONFIGS,
    AnyPreprocessorConfig,
    ImagePreprocessorConfig,
)

#: Preprocessor tag (``None``: tokens) -> the decoder tags a model accepts with it.
DECODERS_FOR: dict[str | None, tuple[str, ...]] = {
    None: ("classification", "projection", "basic"),
    "image": ("classification", "projection", "basic"),
    "text": ("basic", "classification"),
    "flow": ("flow",),
    "modality": ("classification",),
    "multimodal": ("multimodal",),
}

#: Preprocessors whose models need the ``io`` encoder layout (one cross-attend).
IO_LAYOUT_ONLY = ("text", "flow", "multimodal")


def tagged(config: Any) -> dict[str, Any]:
    """A sub-config as ``config.json`` stores it: its fields and its ``type`` tag."""
    return {"type": config.type, **config.to_dict()}


def from_tagged(name: str, value: Any, table: dict[str, type]) -> Any:
    """A sub-config from a config instance (kept) or a tagged dict (built by the class its ``type`` names)."""
    classes = tuple(dict.fromkeys(table.values()))
    if isinstance(value, classes):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be one of {', '.join(c.__name__ for c in classes)} or a dict with a 'type' "
                        f"tag, got {type(value).__name__}")
    tag = value.get("type")
    if tag not in table:
        fail(f"{name}['type']", tag, f"one of {tuple(table)}")
    cls = table[tag]
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls.from_dict(value if "type" in fields else {k: v for k, v in value.items() if k != "type"})


@dataclass(frozen=True, kw_only=True)
class PerceiverIOConfig(ConfigBase):
    """A whole Perceiver IO (or original Perceiver) model: preprocessor, encoder, decoder and MLP activation.

    With ``preprocessor=None`` the model takes tokens ``(B, M, input_channels)``; otherwise
    ``input_channels`` is derived from the preprocessor (its ``token_channels``). ``activation`` defaults to
    the official tanh-approximated GELU; HF transformers uses exact GELU (``"gelu"``). See the module
    docstring for the preprocessor/decoder pairs; sub-configs may be given as tagged dicts.
    """

    _nested: ClassVar[dict[str, type]] = {"encoder": EncoderConfig}

    preprocessor: AnyPreprocessorConfig | None = None
    input_channels: int | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: AnyDecoderConfig = field(default_factory=DecoderConfig)
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        self._coerce_nested()
        if self.preprocessor is not None:
            object.__setattr__(self, "preprocessor", from_tagged("preprocessor", self.preprocessor,
                                                                 PREPROCESSOR_CONFIGS))
        object.__setattr__(self, "decoder", from_tagged("decoder", self.decoder, DECODER_CONFIGS))
        check_choice("activation", self.activation, ACTIVATIONS)
        prep, enc, dec = self.preprocessor, self.encoder, self.decoder
        if prep is None:
            if self.input_channels is None:
                fail("input_channels", None, "an int when preprocessor is None")
            check_int("input_channels", self.input_channels)
        else:
            derived = prep.token_channels
            if self.input_channels not in (None, derived):
                fail("input_channels", self.input_channels, f"None or {derived} (derived from the preprocessor)")
            object.__setattr__(self, "input_channels", derived)
        kind = self.preprocessor_type
        check_choice("decoder.type", dec.type, DECODERS_FOR[kind])
        if kind in IO_LAYOUT_ONLY and enc.layout != "io":
            fail("encoder.layout", enc.layout, f"'io' for a model with a {kind!r} preprocessor")
        if kind == "modality":
            if prep.kind != "audio":
                fail("preprocessor.kind", prep.kind, "'audio' (a single modality read alone is raw audio)")
            if prep.mask_prob is not None:
                fail("preprocessor.mask_prob", prep.mask_prob, "None (mask tokens are multimodal only)")
        if self.is_mlm:
            self._check_mlm_decoder()
        enc.check_cross_attention_heads(self.input_channels)
        if dec.type != "projection":
            check_decoder_heads(dec, enc.num_latent_channels)

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
        if dec.num_outputs != prep.vocab_size:  # official EmbeddingDecoder: logits over the embedding's vocabulary
            fail("decoder.num_outputs", dec.num_outputs, f"preprocessor.vocab_size={prep.vocab_size}: MLM logits come "
                 "from the tied byte embedding, one per vocabulary entry (to change the vocabulary, set "
                 "preprocessor.vocab_size and decoder.num_outputs together)")
        if dec.num_query_channels != prep.num_channels:
            fail("decoder.num_query_channels", dec.num_query_channels,
                 f"preprocessor.num_channels={prep.num_channels} (the output is decoded with the byte embedding)")

    @property
    def preprocessor_type(self) -> str | None:
        """The preprocessor's tag (``None``: the model takes tokens)."""
        return None if self.preprocessor is None else self.preprocessor.type

    @property
    def is_mlm(self) -> bool:
        """A byte-level masked language model: text preprocessor, basic decoder, logits tied to the embedding."""
        return self.preprocessor_type == "text" and self.decoder.type == "basic"

    @property
    def preprocessed_channels(self) -> int:
        """Channels of the preprocessed input *without* positions (for ``concat_preprocessed_input``)."""
        if isinstance(self.preprocessor, ImagePreprocessorConfig):
            return self.preprocessor.feature_channels
        return self.input_channels if self.preprocessor is None else 0

    def debug_size(self) -> PerceiverIOConfig:
        """The same model (preprocessor, encoder layout and weight sharing, decoder, output stage) at test size:
        each sub-config's ``debug_size()``, with the masked-LM decoder kept one query per text position and as
        wide as the byte embedding, and a decoder that concatenates the input kept on the input's token grid."""
        prep = None if self.preprocessor is None else self.preprocessor.debug_size()
        dec = self.decoder.debug_size()
        if self.is_mlm:
            dec = dec.replace(output_index_dims=(prep.max_seq_len,), num_query_channels=prep.num_channels,
                              num_outputs=prep.vocab_size)
        elif dec.type == "basic" and dec.concat_preprocessed_input and prep is not None:
            dec = dec.replace(output_index_dims=prep.grid, max_resolution=None if dec.max_resolution is None
                              else prep.grid)
        return PerceiverIOConfig(preprocessor=prep, input_channels=None if prep is not None else
                                 min(self.input_channels, 8), encoder=self.encoder.debug_size(), decoder=dec,
                                 activation=self.activation)

    def to_dict(self) -> dict[str, Any]:
        """``config.json``'s ``config`` object: sub-configs with their ``type`` tags."""
        return {"preprocessor": None if self.preprocessor is None else tagged(self.preprocessor),
                "input_channels": self.input_channels, "encoder": self.encoder.to_dict(),
                "decoder": tagged(self.decoder), "activation": self.activation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerceiverIOConfig:
        """Build from ``config.json``'s ``config`` object (older untagged layouts are translated first)."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        return super().from_dict(upgrade_layout(data))

    def replace(self, **changes: Any) -> PerceiverIOConfig:
        """A copy with ``changes``. A dict for ``preprocessor`` / ``decoder`` changes fields of the current
        sub-config, unless its ``type`` names another kind: then it is a whole new sub-config."""
        for name, table in (("preprocessor", PREPROCESSOR_CONFIGS), ("decoder", DECODER_CONFIGS)):
            value, current = changes.get(name), getattr(self, name)
            if isinstance(value, dict) and current is not None and table.get(value.get("type", current.type)) \
                    is type(current):
                keep_tag = "type" in {f.name for f in dataclasses.fields(current)}
                changes[name] = current.replace(**{k: v for k, v in value.items() if keep_tag or k != "type"})
        if "preprocessor" in changes and "input_channels" not in changes and self.preprocessor is not None:
            changes["input_channels"] = None  # derived again from the new preprocessor
        return super().replace(**changes)
