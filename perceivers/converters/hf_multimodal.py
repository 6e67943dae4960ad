"""HF ``PerceiverForMultimodalAutoencoding`` <-> our ``PerceiverIOMultimodal``.

HF hard-codes the modality names ``audio``, ``image``, ``label`` and their processing (docs/checkpoints.md,
HF-19: ``PerceiverModel.forward`` reads ``subsampled_output_points["audio"]`` and ``["image"]``); ours
takes any names from the configuration, so a model goes to HF only with exactly those three modalities,
of kinds audio / video / label, in HF's fixed settings (audio 192 bands over ``num_frames *
audio_samples_per_frame`` samples; video 1x4x4 patches, 32 bands, max resolution ``(num_frames, image_size,
image_size)`` for inputs and queries; input padding 4, query padding 2; mask probabilities image 0, audio 0,
label 1).

Numbers: the only HF deviations that reach these outputs are the activation (``hidden_act``, exact GELU by
default; official tanh GELU unless ``hf_compat``) and attention-probability dropout (training only). HF also
drops the decoder query mask, as the official ``MultimodalDecoder`` does, so nothing differs there; HF cannot
decode the full grid without subsampling (HF-11: it takes the channel axis as the index grid), ours can.

Key table (tensors unchanged, both sides PyTorch): ``perceiver.input_preprocessor.padding.{m}`` ->
``preprocessor.padding.{m}`` ``(1, C_common - C_m)``; ``...input_preprocessor.mask.{m}`` ->
``preprocessor.mask_token.{m}`` ``(1, C_common)``; the encoder as for every head;
``perceiver.decoder.modalities.label.decoder.output_position_encodings.position_embeddings`` ->
``decoder.queries.label.pos_embs`` ``(1, C_label_query)``; ``perceiver.decoder.padding.{m}`` ->
``decoder.query_padding.{m}``; ``perceiver.decoder.decoder.decoding_cross_attention.*`` ->
``decoder.cross_attend.*``; ``perceiver.decoder.decoder.final_layer`` -> ``decoder.output``;
``perceiver.output_postprocessor.modalities.{m}.classifier`` -> ``postprocessors.{m}``.
"""

from __future__ import annotations

from typing import Any

from perceivers.converters.hf_keys import (
    CROSS_ATTENTION_LAYER,
    ENCODER,
    KeyRow,
    prefixed,
)
from perceivers.decoders.multimodal import MultimodalDecoderConfig
from perceivers.encoders import EncoderConfig
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.preprocessors.modality import ModalityConfig
from perceivers.preprocessors.multimodal import MultimodalPreprocessorConfig

MULTIMODAL = "PerceiverForMultimodalAutoencoding"
HF_MODALITIES = {"audio": "audio", "image": "video", "label": "label"}  # HF's fixed names -> our kinds
_AUDIO_BANDS, _VIDEO_BANDS, _PATCH = 192, 32, 4
_INPUT_PADDING, _QUERY_PADDING = 4, 2
_MASK_PROBS = {"audio": 0.0, "image": 0.0, "label": 1.0}
_DEFAULTS = dict(num_frames=16, audio_samples_per_frame=1920, samples_per_patch=16, image_size=56,
                 output_shape=[1, 16, 224, 224], output_num_channels=512, _label_trainable_num_channels=1024)


def _rows() -> tuple[KeyRow, ...]:
    rows: list[KeyRow] = []
    for m in HF_MODALITIES:
        rows += [(f"perceiver.input_preprocessor.padding.{m}", f"preprocessor.padding.{m}"),
                 (f"perceiver.input_preprocessor.mask.{m}", f"preprocessor.mask_token.{m}"),
                 (f"perceiver.decoder.padding.{m}", f"decoder.query_padding.{m}"),
                 (f"perceiver.output_postprocessor.modalities.{m}.classifier.{{param}}",
                  f"postprocessors.{m}.{{param}}")]
    rows.append(("perceiver.decoder.modalities.label.decoder.output_position_encodings.position_embeddings",
                 "decoder.queries.label.pos_embs"))
    rows += prefixed(CROSS_ATTENTION_LAYER, "perceiver.decoder.decoder.decoding_cross_attention.",
                     "decoder.cross_attend.")
    rows.append(("perceiver.decoder.decoder.final_layer.{param}", "decoder.output.{param}"))
    return tuple(rows) + ENCODER


#: HF ``PerceiverForMultimodalAutoencoding`` key table (``{i}``: self-attention layer index).
MULTIMODAL_TABLE: tuple[KeyRow, ...] = _rows()


def _get(hf: dict[str, Any], name: str) -> Any:
    return hf.get(name, _DEFAULTS[name])


def hf_multimodal_config(hf: dict[str, Any], *, encoder: EncoderConfig, activation: str,
                         num_labels: int) -> PerceiverIOConfig:
    """HF ``config.json`` fields of ``PerceiverForMultimodalAutoencoding`` -> our config (modalities named as HF)."""
    frames, spf, spp = _get(hf, "num_frames"), _get(hf, "audio_samples_per_frame"), _get(hf, "samples_per_patch")
    size, shape = _get(hf, "image_size"), list(_get(hf, "output_shape"))
    if len(shape) != 4:
        raise ValueError(f"HF output_shape={shape!r} must be [batch, frames, height, width]")
    samples, grid = frames * spf, (frames, size, size)
    modalities = {
        "audio": ModalityConfig(kind="audio", num_samples=samples, samples_per_patch=spp, num_bands=_AUDIO_BANDS,
                                max_resolution=(samples,), mask_prob=_MASK_PROBS["audio"]),
        "image": ModalityConfig(kind="video", num_frames=shape[1], image_size=(shape[2], shape[3]), in_channels=3,
                                temporal_patch=1, spatial_patch=_PATCH, num_bands=_VIDEO_BANDS, max_resolution=grid,
                                query_max_resolution=grid, mask_prob=_MASK_PROBS["image"]),
        "label": ModalityConfig(kind="label", num_classes=num_labels,
                                query_channels=_get(hf, "_label_trainable_num_channels"),
                                mask_prob=_MASK_PROBS["label"]),
    }
    prep = MultimodalPreprocessorConfig(modalities=modalities, min_padding_size=_INPUT_PADDING)
    decoder = MultimodalDecoderConfig(min_padding_size=_QUERY_PADDING, num_heads=1, widening_factor=1,
                                      use_query_residual=False, num_output_channels=_get(hf, "output_num_channels"))
    # HF's decoder cross-attention takes qk from the same cross_attention_shape_for_attention as the encoder.
    if encoder.cross_attention_shape_for_attn == "q":
        decoder = decoder.replace(qk_channels=decoder.query_width(prep.modalities))
    return PerceiverIOConfig(preprocessor=prep, encoder=encoder, decoder=decoder, activation=activation)


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"cannot express this model as HF PerceiverForMultimodalAutoencoding: {what}")


def multimodal_config_to_hf(config: PerceiverIOConfig) -> dict[str, Any]:
    """Our multimodal config -> HF ``config.json`` fields (without the encoder fields); ``ValueError`` naming what
    HF cannot express (HF hard-codes modality names, bands, patches, paddings and mask probabilities)."""
    prep = config.preprocessor
    mods = prep.modalities
    _require({n: m.kind for n, m in mods.items()} == HF_MODALITIES,
             f"HF hard-codes the modalities {HF_MODALITIES} (name: kind), got "
             f"{ {n: m.kind for n, m in mods.items()} }")
    for name, m in mods.items():
        _require(m.mask_prob == _MASK_PROBS[name], f"HF masks {name} with probability {_MASK_PROBS[name]}, "
                 f"got mask_prob={m.mask_prob}")
        _require(m.concat_pos and not m.sine_only, f"{name}: HF uses concat_pos=True, sine_only=False")
    audio, video, label = mods["audio"], mods["image"], mods["label"]
    for m, bands in ((audio, _AUDIO_BANDS), (video, _VIDEO_BANDS)):
        _require(m.num_bands == bands and m.query_num_bands in (None, bands), f"HF uses {bands} bands for {m.kind}")
    _require(audio.input_max_resolution == audio.output_max_resolution == (audio.num_samples,),
             "HF's audio max resolution is the number of samples, for inputs and queries")
    res = video.input_max_resolution
    _require(res == video.output_max_resolution and res[1] == res[2],
             "HF uses one max resolution (num_frames, image_size, image_size) for video inputs and queries")
    _require(audio.num_samples % res[0] == 0, f"audio samples ({audio.num_samples}) must be a multiple of the "
             f"video max resolution's frames ({res[0]}): HF derives them as num_frames * audio_samples_per_frame")
    _require(video.in_channels == 3 and video.temporal_patch == 1 and video.spatial_patch == _PATCH,
             "HF's video is RGB in 1x4x4 patches")
    dec = config.decoder
    if config.encoder.cross_attention_shape_for_attn == "kv":
        qk_ok = dec.qk_channels in (None, config.encoder.num_latent_channels)
    else:
        qk_ok = dec.qk_channels == dec.query_width(mods)
    _require(prep.min_padding_size == _INPUT_PADDING and dec.min_padding_size == _QUERY_PADDING,
             f"HF pads inputs by {_INPUT_PADDING} and queries by {_QUERY_PADDING}")
    _require(dec.num_heads == 1 and dec.widening_factor == 1 and not dec.use_query_residual and qk_ok
             and dec.v_channels in (None, dec.qk_channels or config.encoder.num_latent_channels),
             "HF's multimodal decoder has 1 head, widening 1, no query residual, qk/v from the encoder's "
             "cross_attention_shape_for_attention")
    return {
        "num_frames": res[0], "audio_samples_per_frame": audio.num_samples // res[0],
        "samples_per_patch": audio.samples_per_patch, "image_size": res[1],
        "output_shape": [1, video.num_frames, *video.image_size], "output_num_channels": dec.num_output_channels,
        "_label_trainable_num_channels": label.query_channels, "d_model": prep.input_width,
        "id2label": {str(i): f"LABEL_{i}" for i in range(label.num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(label.num_classes)},
    }
