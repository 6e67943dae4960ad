"""Official Haiku module table of the multimodal autoencoder (``video_autoencoding_checkpoint.pystate``).

Names (perceiver-io.md §14.2), for modality ``{m}`` of our config:

- ``multimodal_preprocessor/{m}_padding/pos_embs`` ``[1, C_common - C_m]`` and
  ``multimodal_preprocessor/{m}_mask_token/pos_embs`` ``[1, C_common]`` (modalities with a mask token);
- the encoder under ``encoder`` (the colab names it so, not ``perceiver_encoder``);
- ``multimodal_decoder/~/basic_decoder/cross_attention/...`` and ``.../basic_decoder/output`` (``w [C_q, C_out]``);
- ``multimodal_decoder/~decoder_query/{m}_padding/pos_embs`` ``[1, C_q - C_q,m]``;
- the label query at top level, ``classification_decoder/~/basic_decoder/~/trainable_position_encoding/pos_embs``
  ``[1, C_label_query]`` (the colab builds the sub-decoders outside the multimodal decoder);
- output layers named by class, not modality: ``audio_postprocessor/linear`` (audio),
  ``projection_postprocessor/linear`` (video), ``classification_postprocessor/linear`` (label).

Haiku numbers repeated module names ``_1``, ``_2`` in creation order; with two modalities of one kind we
assume they were created in sorted name order (the released model has one of each).
"""

from __future__ import annotations

from perceivers.converters.haiku import (
    ModuleRow,
    cross_attention_rows,
    encoder_rows,
    haiku_suffix,
)

#: Our modality kind -> official postprocessor module name.
POSTPROCESSOR_NAMES = {"audio": "audio_postprocessor", "video": "projection_postprocessor",
                       "label": "classification_postprocessor"}


def multimodal_rows(config) -> list[ModuleRow]:
    """Module table for a :class:`~perceivers.models.perceiver_io.multimodal_config.PerceiverIOMultimodalConfig`."""
    rows: list[ModuleRow] = []
    seen: dict[str, int] = {}
    for name, m in config.modalities.items():  # sorted names
        rows.append((f"multimodal_preprocessor/{name}_padding", f"preprocessor.padding.{name}", "table"))
        if m.mask_prob is not None:
            rows.append((f"multimodal_preprocessor/{name}_mask_token", f"preprocessor.mask_token.{name}", "table"))
        rows.append((f"multimodal_decoder/~decoder_query/{name}_padding", f"decoder.query_padding.{name}", "table"))
        k = seen.get(m.kind, 0)
        seen[m.kind] = k + 1
        if m.kind == "label":
            rows.append((f"classification_decoder{haiku_suffix(k)}/~/basic_decoder/~/trainable_position_encoding",
                         f"decoder.queries.{name}.pos_embs", "table"))
        rows.append((f"{POSTPROCESSOR_NAMES[m.kind]}{haiku_suffix(k)}/linear", f"postprocessors.{name}", "linear"))
    rows += encoder_rows(config.encoder.num_self_attends_per_block, scope="encoder")
    rows += cross_attention_rows("multimodal_decoder/~/basic_decoder/cross_attention", "decoder.cross_attend")
    rows.append(("multimodal_decoder/~/basic_decoder/output", "decoder.output", "linear"))
    return rows
