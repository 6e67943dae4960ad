"""Perceiver IO ``config.json`` layouts written before the one-config model, translated to today's layout.

Until the 2026-12 consolidation each Perceiver IO task had its own model type and config class, and the
sub-configs carried no ``type`` tag (examples in ``tests/fixtures/legacy_v1``):

- ``perceiver_io``: ``preprocessor`` an image config (or ``null``), ``decoder`` with ``type`` already;
- ``perceiver_io_language``: ``preprocessor`` a text config (``vocab_size``, ``max_seq_len``, ...);
- ``perceiver_io_flow``: ``preprocessor`` a flow config (``patch_size``, ``num_frames``, ...), untagged flow decoder;
- ``perceiver_io_audio``: ``preprocessor`` a modality config (``kind``);
- ``perceiver_io_multimodal``: ``modalities``, ``min_padding_size`` and ``padding_init_scale`` at the top,
  untagged multimodal decoder.

Every layout is told apart by the fields ``save_pretrained`` wrote, so :func:`upgrade_layout` needs no model
type; the old model types load through :class:`~perceivers.models.perceiver_io.model.PerceiverIO`
(:data:`LEGACY_MODEL_TYPES`), which builds the task class the translated config names. A saved folder keeps
its old ``config.json`` until it is saved again.
"""

from __future__ import annotations

from typing import Any

#: Model types of the five pre-consolidation Perceiver IO classes other than ``perceiver_io`` itself.
LEGACY_MODEL_TYPES = ("perceiver_io_language", "perceiver_io_flow", "perceiver_io_audio", "perceiver_io_multimodal")

#: Fields that tell an untagged preprocessor object's kind (checked in this order; otherwise an image).
_PREPROCESSOR_MARKS = (("modality", "kind"), ("text", "vocab_size"), ("flow", "patch_size"))
#: Top-level fields of the old multimodal config that now belong to its preprocessor.
_MULTIMODAL_PREPROCESSOR_FIELDS = ("modalities", "min_padding_size", "padding_init_scale")


def is_current_layout(data: dict[str, Any]) -> bool:
    """True if ``data`` (a ``config`` object) has today's layout: no top-level ``modalities``, a ``type`` tag in
    the preprocessor (or none) and in the decoder (or none: the default decoder)."""
    prep, dec = data.get("preprocessor"), data.get("decoder")
    return ("modalities" not in data and (not isinstance(prep, dict) or "type" in prep)
            and (not isinstance(dec, dict) or "type" in dec))


def preprocessor_type_v1(prep: dict[str, Any]) -> str:
    """The tag of an untagged (pre-consolidation) preprocessor object, from the fields it holds."""
    return next((tag for tag, mark in _PREPROCESSOR_MARKS if mark in prep), "image")


def upgrade_layout(data: dict[str, Any]) -> dict[str, Any]:
    """A Perceiver IO ``config`` object of any saved layout -> today's tagged layout (a new dict; one already in
    today's layout is returned unchanged). Unknown fields are kept for the config to report."""
    if not isinstance(data, dict) or is_current_layout(data):
        return data
    out = dict(data)
    if "modalities" in out:  # perceiver_io_multimodal
        out["preprocessor"] = {"type": "multimodal",
                               **{k: out.pop(k) for k in _MULTIMODAL_PREPROCESSOR_FIELDS if k in out}}
        decoder_type = "multimodal"
    else:
        prep = out.get("preprocessor")
        if isinstance(prep, dict) and "type" not in prep:
            out["preprocessor"] = {"type": preprocessor_type_v1(prep), **prep}
        tag = out["preprocessor"]["type"] if isinstance(out.get("preprocessor"), dict) else None
        decoder_type = "flow" if tag == "flow" else "classification"  # DecoderConfig's default type
    dec = out.get("decoder", {} if decoder_type != "classification" else None)  # old defaults: flow, multimodal
    if isinstance(dec, dict) and "type" not in dec:
        out["decoder"] = {"type": decoder_type, **dec}
    return out
