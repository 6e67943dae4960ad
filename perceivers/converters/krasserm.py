"""krasserm's ``perceiver-io`` (0.6.0) Perceiver IO state dicts -> our :class:`~perceivers.models.perceiver_io.model.PerceiverIO`.

Its ``ImageClassifier`` (Fourier-encoded channels-last images), ``MaskedLanguageModel`` (tied output) and
``TextClassifier`` are a generic ``PerceiverEncoder`` + ``PerceiverDecoder`` (``nn.Sequential`` children ``0`` and
``1``) around an input and an output adapter; all three convert with output parity
(docs/checkpoints.md#krasserm-perceiver-io). Its attention, pre-LayerNorm blocks and GELU MLPs are ours with
``activation='gelu'`` (exact GELU); its qk width defaults to the *query* width, which our configs receive as
explicit widths (``cross_attend_qk_channels`` / ``qk_channels``). It cross-attends before the first
``num_cross_attention_layers`` blocks: one (our ``io`` layout) or more (``interleaved``, with
``num_cross_attends`` when not all); ``first_*_shared`` map to our ``*_sharing`` options. Its Perceiver AR is not converted (see the docs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from perceivers.converters.ports import (
    Row,
    Settings,
    apply_table,
    build_loaded,
    read_state_dict_file,
    shape,
)
from perceivers.core.errors import ConfigError
from perceivers.decoders import DecoderConfig
from perceivers.encoders import EncoderConfig
from perceivers.layers.position import fourier_features, grid_positions
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.models.perceiver_io.model import PerceiverIO
from perceivers.preprocessors import ImagePreprocessorConfig, TextPreprocessorConfig

PEER = "krasserm perceiver-io"
SETTINGS = ("model", "num_latents", "num_latent_channels", "encoder.num_cross_attention_heads",
            "encoder.num_self_attention_heads", "encoder.num_cross_attention_layers",
            "encoder.num_self_attention_blocks", "encoder.first_cross_attention_layer_shared",
            "encoder.first_self_attention_block_shared", "encoder.image_shape", "decoder.num_cross_attention_heads",
            "encoder.num_cross_attention_qk_channels", "encoder.num_cross_attention_v_channels",
            "encoder.num_self_attention_qk_channels", "encoder.num_self_attention_v_channels",
            "encoder.num_self_attention_layers_per_block", "encoder.cross_attention_widening_factor",
            "encoder.self_attention_widening_factor", "encoder.num_frequency_bands", "encoder.vocab_size",
            "encoder.max_seq_len", "encoder.num_input_channels", "encoder.dropout", "encoder.init_scale",
            "encoder.freeze", "encoder.params", "decoder.num_cross_attention_qk_channels",
            "decoder.num_cross_attention_v_channels", "decoder.cross_attention_widening_factor",
            "decoder.cross_attention_residual", "decoder.num_output_queries", "decoder.num_output_query_channels",
            "decoder.num_classes", "decoder.vocab_size", "decoder.max_seq_len", "decoder.dropout",
            "decoder.init_scale", "decoder.freeze", "activation_checkpointing", "activation_offloading", "params")
MODELS = ("ImageClassifier", "MaskedLanguageModel", "TextClassifier")


def flatten_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The peer's nested config (``{"encoder": {...}, "decoder": {...}, ...}``) as dotted names."""
    flat: dict[str, Any] = {}
    for key, value in (settings or {}).items():
        if key in ("encoder", "decoder") and isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def detect_model(state: Mapping[str, Tensor]) -> str:
    """Which krasserm Perceiver IO model a state dict is, from its adapter keys."""
    if "0.input_adapter.position_encoding" in state:
        return "ImageClassifier"
    if "0.input_adapter.txt_embedding.weight" in state:
        return "MaskedLanguageModel" if "1.output_adapter.bias" in state else "TextClassifier"
    if "input_adapter.frq_pos_encoding.inv_freq" in state:
        raise ConfigError(f"{PEER}: a Perceiver AR (CausalLanguageModel) state dict does not convert yet: its "
                          f"queries, positions and biases need options our PerceiverAR lacks "
                          f"(docs/checkpoints.md#krasserm-perceiver-io)")
    raise ConfigError(f"{PEER}: not an ImageClassifier, MaskedLanguageModel or TextClassifier state dict (no "
                      f"0.input_adapter.* keys)")


def _layer_rows(src: str, dst: str, *, residual: bool = True, self_attention: bool = False) -> list[Row]:
    """A ``CrossAttentionLayer`` / ``SelfAttentionLayer`` (``Sequential(Residual(attn), Residual(MLP))``) at
    ``src`` -> our block at ``dst``; ``residual=False``: the attention is not wrapped in ``Residual``."""
    attn = f"{src}.0.module" if residual else f"{src}.0"
    norms = [("norm", "attention_norm")] if self_attention else [("q_norm", "q_norm"), ("kv_norm", "kv_norm")]
    rows: list[Row] = []
    for theirs, ours in norms:
        rows += [(f"{attn}.{theirs}.{p}", f"{dst}.{ours}.{p}", None) for p in ("weight", "bias")]
    rows += [(f"{attn}.attention.{n}_proj.{p}", f"{dst}.attention.{n}_proj.{p}", None)
             for n in "qkvo" for p in ("weight", "bias")]
    for theirs, ours in (("0", "mlp_norm"), ("1", "mlp.fc1"), ("3", "mlp.fc2")):
        rows += [(f"{src}.1.module.{theirs}.{p}", f"{dst}.{ours}.{p}", None) for p in ("weight", "bias")]
    return rows


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def _encoder(state: Mapping[str, Tensor], s: Settings, input_channels: int) -> tuple[EncoderConfig, list[Row]]:
    """Our encoder config and key rows from ``0.*`` (krasserm ``PerceiverEncoder``)."""
    n, d = shape(state, "0.latent", PEER)
    per_block = _count(state, "0.self_attn_1.")
    extra_cross, extra_self = "0.cross_attn_n.0.module.q_norm.weight" in state, "0.self_attn_n.0.0.module.norm.weight" in state
    crosses = s.int("encoder.num_cross_attention_layers", 2 if extra_cross else 1)
    blocks = s.int("encoder.num_self_attention_blocks", max(crosses, 2 if extra_self else 1))
    if crosses > blocks:
        s.refuse("encoder.num_cross_attention_layers", crosses, f"at most num_self_attention_blocks={blocks}")
    if extra_cross != (crosses > 1 and not s.bool("encoder.first_cross_attention_layer_shared", not extra_cross)):
        s.refuse("encoder.first_cross_attention_layer_shared", s.get("encoder.first_cross_attention_layer_shared"),
                 f"the file {'has' if extra_cross else 'lacks'} 0.cross_attn_n.*")
    if extra_self != (blocks > 1 and not s.bool("encoder.first_self_attention_block_shared", not extra_self)):
        s.refuse("encoder.first_self_attention_block_shared", s.get("encoder.first_self_attention_block_shared"),
                 f"the file {'has' if extra_self else 'lacks'} 0.self_attn_n.* (num_self_attention_blocks={blocks})")
    cross, self0 = "0.cross_attn_1.0.module.attention", "0.self_attn_1.0.0.module.attention"
    encoder = EncoderConfig(
        num_latents=n, num_latent_channels=d, num_blocks=blocks, num_self_attends_per_block=per_block,
        num_cross_attend_heads=s.int("encoder.num_cross_attention_heads", 8),
        num_self_attend_heads=s.int("encoder.num_self_attention_heads", 8),
        cross_attend_widening_factor=shape(state, "0.cross_attn_1.1.module.1.weight", PEER)[0] // d,
        self_attend_widening_factor=shape(state, "0.self_attn_1.0.1.module.1.weight", PEER)[0] // d,
        qk_channels=shape(state, f"{self0}.q_proj.weight", PEER)[0],
        v_channels=shape(state, f"{self0}.v_proj.weight", PEER)[0],
        cross_attend_qk_channels=shape(state, f"{cross}.q_proj.weight", PEER)[0],
        cross_attend_v_channels=shape(state, f"{cross}.v_proj.weight", PEER)[0],
        layout="io" if crosses == 1 else "interleaved", num_cross_attends=None if crosses in (1, blocks) else crosses,
        cross_attend_sharing="all_but_first" if extra_cross else "all",
        self_attend_sharing="all_but_first" if extra_self else "all")
    encoder.check_cross_attention_heads(input_channels)
    rows: list[Row] = [("0.latent", "encoder.latents", None)]
    for k, name in enumerate(["cross_attn_1", "cross_attn_n"][: 2 if extra_cross else 1]):
        rows += _layer_rows(f"0.{name}", f"encoder.cross_attends.{k}")
    for k, name in enumerate(["self_attn_1", "self_attn_n"][: 2 if extra_self else 1]):
        rows += [row for j in range(per_block)
                 for row in _layer_rows(f"0.{name}.{j}", f"encoder.self_attends.{k * per_block + j}",
                                        self_attention=True)]
    return encoder, rows


def _decoder(state: Mapping[str, Tensor], s: Settings, latent_channels: int, **fields: Any) -> tuple[dict, list[Row]]:
    """Decoder fields and key rows from ``1.cross_attn.*`` (krasserm ``PerceiverDecoder``)."""
    residual = "1.cross_attn.0.module.q_norm.weight" in state
    if s.bool("decoder.cross_attention_residual", residual) != residual:
        s.refuse("decoder.cross_attention_residual", not residual, f"the file's decoder attention is "
                 f"{'' if residual else 'not '}wrapped in Residual")
    attn = "1.cross_attn.0.module.attention" if residual else "1.cross_attn.0.attention"
    queries, channels = shape(state, "1.output_adapter._output_query", PEER)
    heads = s.int("decoder.num_cross_attention_heads", 8)
    dec = dict(num_query_channels=channels, num_heads=heads, qk_channels=shape(state, f"{attn}.q_proj.weight", PEER)[0],
               v_channels=shape(state, f"{attn}.v_proj.weight", PEER)[0], use_query_residual=residual,
               widening_factor=shape(state, "1.cross_attn.1.module.1.weight", PEER)[0] // channels, **fields)
    return dec | {"_queries": queries}, _layer_rows("1.cross_attn", "decoder.cross_attend", residual=residual)


def _image(state: Mapping[str, Tensor], s: Settings, kv: int) -> ImagePreprocessorConfig:
    """The image preprocessor of an ``ImageClassifier``, its Fourier features checked against the file's."""
    enc = state["0.input_adapter.position_encoding"]
    positions, pos_channels = enc.shape
    bands = (pos_channels // 2 - 1) // 2
    given = s.get("encoder.image_shape")
    if given is None:
        side = math.isqrt(positions)
        if side * side != positions:
            raise ConfigError(f"{PEER}: give encoder.image_shape [H, W, C]: the file has {positions} positions")
        given = (side, side, kv - pos_channels)
    if not isinstance(given, (list, tuple)) or len(given) != 3:
        s.refuse("encoder.image_shape", given, "[height, width, channels] of a 2-D image")
    h, w, c = given
    if h * w != positions or c + pos_channels != kv or pos_channels != 2 * (2 * bands + 1):
        s.refuse("encoder.image_shape", given, f"the file has {positions} positions and {kv - pos_channels} "
                 f"image channels")
    ours = fourier_features(grid_positions((h, w)), num_bands=bands, max_resolution=(h, w))
    if not torch.allclose(ours, enc.float(), atol=1e-4):
        raise ConfigError(f"{PEER}: 0.input_adapter.position_encoding is not the Fourier encoding of a {h}x{w} "
                          f"grid with {bands} bands")
    return ImagePreprocessorConfig(image_size=(h, w), in_channels=c, prep_type="pixels", spatial_downsample=1,
                                   position_encoding="fourier", num_bands=bands)


def krasserm_conversion(state: Mapping[str, Tensor], s: Settings, model: str) -> tuple[PerceiverIOConfig, list[Row]]:
    """Our config and the key table of a krasserm Perceiver IO ``model``."""
    latent_channels = shape(state, "0.latent", PEER)[1]
    kv = shape(state, "0.cross_attn_1.0.module.kv_norm.weight", PEER)[0]
    rows: list[Row] = []
    if model == "ImageClassifier":
        prep = _image(state, s, kv)
        rows.append(("0.input_adapter.position_encoding", "", None))  # checked above, recomputed by ours
    else:
        vocab, channels = shape(state, "0.input_adapter.txt_embedding.weight", PEER)
        prep = TextPreprocessorConfig(vocab_size=vocab, num_channels=channels,
                                      max_seq_len=shape(state, "0.input_adapter.pos_encoding", PEER)[0])
        rows += [("0.input_adapter.txt_embedding.weight", "preprocessor.embedding.weight", None),
                 ("0.input_adapter.pos_encoding", "preprocessor.position.pos_embs", None)]
    encoder, enc_rows = _encoder(state, s, kv)
    if model != "ImageClassifier" and encoder.layout != "io":
        s.refuse("encoder.num_cross_attention_layers", s.get("encoder.num_cross_attention_layers"),
                 "our text models cross-attend once (1)")
    if model == "MaskedLanguageModel":
        dec, dec_rows = _decoder(state, s, latent_channels, type="basic", final_project=False,
                                 num_outputs=prep.vocab_size)  # MLM logits: one per vocabulary entry
        dec["output_index_dims"] = (dec.pop("_queries"),)
        rows += [("1.output_adapter._output_query", "decoder.query_pos.pos_embs", None),
                 ("1.output_adapter.bias", "embedding_decoder.bias", None)]
    else:
        dec, dec_rows = _decoder(state, s, latent_channels, type="classification",
                                 num_outputs=shape(state, "1.output_adapter.linear.weight", PEER)[0])
        queries = dec.pop("_queries")
        if queries != 1:
            s.refuse("decoder.num_output_queries", queries, "one output query (ours returns "
                     "(B, classes)); an MLM with an untied output (num_output_query_channels) does not convert either")
        rows += [("1.output_adapter._output_query", "decoder.query_pos.pos_embs", None),
                 ("1.output_adapter.linear.weight", "decoder.output.weight", None),
                 ("1.output_adapter.linear.bias", "decoder.output.bias", None)]
    config = PerceiverIOConfig(preprocessor=prep, encoder=encoder, decoder=DecoderConfig(**dec), activation="gelu")
    return config, rows + enc_rows + dec_rows


def convert_krasserm_state_dict(state: Mapping[str, Tensor], settings: Mapping[str, Any] | None = None) -> PerceiverIO:
    """Our model (eval mode) computing what krasserm's model with this ``state_dict()`` computes.

    ``settings``: the peer's ``PerceiverConfig`` fields the shapes do not fix, nested (``{"encoder": {...},
    "decoder": {...}}``) or dotted: heads (``encoder.num_cross_attention_heads``, ``encoder.num_self_attention_heads``,
    ``decoder.num_cross_attention_heads``, the peer's defaults 8), ``encoder.num_cross_attention_layers`` and
    ``encoder.num_self_attention_blocks`` (defaults 1), ``encoder.image_shape`` for a non-square image; optionally
    ``model`` (else detected). Inputs: the peer's channels-last images ``(B, H, W, C)`` are our NCHW
    ``x.permute(0, 3, 1, 2)``; token ids ``(B, L)`` are the same, and the peer's ``pad_mask`` (True = padding) is our
    ``input_mask = ~pad_mask``. Raises :class:`~perceivers.core.errors.ConfigError` naming what does not fit.
    """
    flat = flatten_settings(settings)
    model = flat.get("model") or detect_model(state)
    if model not in MODELS or model != detect_model(state):
        raise ConfigError(f"{PEER}: model={model!r} is invalid: expected the state dict's kind, "
                          f"{detect_model(state)!r}")
    s = Settings(f"{PEER} {model}", flat, SETTINGS)
    config, rows = krasserm_conversion(state, s, model)
    unused = [src for src, dst, _ in rows if not dst]
    ours = apply_table(state, [row for row in rows if row[1]], source=f"{PEER} {model}", unused_ok=unused)
    return build_loaded(PerceiverIO, config, ours, source=f"{PEER} {model}")


def convert_krasserm_file(path: str | Path, settings: Mapping[str, Any] | None = None) -> PerceiverIO:
    """:func:`convert_krasserm_state_dict` of a ``torch.save(model.state_dict(), path)`` file."""
    return convert_krasserm_state_dict(read_state_dict_file(path), settings)


__all__ = ["convert_krasserm_file", "convert_krasserm_state_dict", "detect_model", "flatten_settings"]
