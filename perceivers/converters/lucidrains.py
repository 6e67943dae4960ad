"""lucidrains' ``perceiver-pytorch`` (0.11.0) state dicts -> our :class:`~perceivers.models.perceiver_io.model.PerceiverIO`.

Both of its models convert with output parity (docs/checkpoints.md#other-pytorch-ports):

- ``Perceiver``: ``depth`` blocks of [cross-attention + GEGLU feed-forward, ``self_per_cross_attn`` x
  (self-attention + feed-forward)], mean -> LayerNorm -> Linear head. Ours: the ``interleaved`` encoder layout
  with ``cross_attend_sharing`` / ``self_attend_sharing`` ``'none'`` (untied) or ``'all_but_first'``
  (``weight_tie_layers=True``: block 0 its own, blocks 1.. one module), ``qkv_bias=False``, ``activation='geglu'``
  (widening 4), the ``projection`` decoder with ``projection_norm``. With ``fourier_encode_data`` (2-D inputs
  only) an image preprocessor (``pixels``, Fourier bands ``num_freq_bands``, ``max_resolution=max_freq``) reads
  NCHW images; the peer's per-axis ``[sin, cos, raw]`` feature order is the official order permuted, so the
  permutation is applied to the first cross-attention inputs (key/value LayerNorm and projections' columns):
  exact, no new layout. Without it the model reads tokens ``(B, M, input_channels)``.
- ``PerceiverIO``: one cross-attention, ``depth`` latent blocks (``weight_tie_layers`` ties all: our shared
  stack), a decoder cross-attention from caller-given queries without query residual
  (``external_queries``, ``use_query_residual=False``), its feed-forward only with ``decoder_ff``
  (``use_mlp``), and ``to_logits`` (``final_project``) when ``logits_dim`` was set.

The peer's constructor arguments are not in its state dict: widths, depth, ``self_per_cross_attn``, tying, the
head and the Fourier band count (given ``input_channels``) come from the shapes; heads, ``max_freq`` and the
image size come from ``settings``. Dropouts are training-time only and are not carried over.
"""

from __future__ import annotations

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
    check_tied,
    first_half,
    heads_split,
    read_state_dict_file,
    second_half,
    shape,
)
from perceivers.core.errors import ConfigError
from perceivers.decoders import DecoderConfig
from perceivers.encoders import EncoderConfig
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.models.perceiver_io.model import PerceiverIO
from perceivers.preprocessors import ImagePreprocessorConfig

PEER = "lucidrains perceiver-pytorch"
PERCEIVER_SETTINGS = ("model", "num_freq_bands", "depth", "max_freq", "input_channels", "input_axis",
                      "num_latents", "latent_dim", "cross_heads", "latent_heads", "cross_dim_head",
                      "latent_dim_head", "num_classes", "attn_dropout", "ff_dropout", "weight_tie_layers",
                      "fourier_encode_data", "self_per_cross_attn", "final_classifier_head", "inverted_cross_attn",
                      "attn_residual", "attn_residual_rank", "image_size")
IO_SETTINGS = ("model", "depth", "dim", "queries_dim", "logits_dim", "num_latents", "latent_dim", "cross_heads",
               "latent_heads", "cross_dim_head", "latent_dim_head", "weight_tie_layers", "decoder_ff",
               "seq_dropout_prob", "attn_residual", "attn_residual_rank", "inverted_cross_attn")


def detect_model(state: Mapping[str, Tensor]) -> str:
    """``'Perceiver'`` or ``'PerceiverIO'`` from the keys of a peer state dict."""
    if "cross_attend_block.cross_attn.norm.weight" in state:
        return "PerceiverIO"
    if "layers.0.cross_attn.norm.weight" in state:
        return "Perceiver"
    raise ConfigError(f"{PEER}: not a Perceiver or PerceiverIO state dict (no layers.0.cross_attn.* or "
                      f"cross_attend_block.cross_attn.* keys)")


def _indices(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))}
    return sorted(found)


def _attention_rows(src: str, dst: str, *, perm: Tensor | None = None) -> list[Row]:
    """``PreNorm(Attention)`` at ``src`` -> our attention block at ``dst`` (norm names differ per block kind;
    ``perm``: the order of the peer's context channels as ours reads them)."""
    k = first_half if perm is None else (lambda t: first_half(t)[:, perm])
    v = second_half if perm is None else (lambda t: second_half(t)[:, perm])
    return [(f"{src}.fn.to_q.weight", f"{dst}.attention.q_proj.weight", None),
            (f"{src}.fn.to_kv.weight", f"{dst}.attention.k_proj.weight", k),
            (f"{src}.fn.to_kv.weight", f"{dst}.attention.v_proj.weight", v),
            (f"{src}.fn.to_out.weight", f"{dst}.attention.o_proj.weight", None),
            (f"{src}.fn.to_out.bias", f"{dst}.attention.o_proj.bias", None)]


def _norm_rows(src: str, dst: str, perm: Tensor | None = None) -> list[Row]:
    t = None if perm is None else (lambda x: x[perm])
    return [(f"{src}.weight", f"{dst}.weight", t), (f"{src}.bias", f"{dst}.bias", t)]


def _ff_rows(src: str, dst: str) -> list[Row]:
    """``PreNorm(FeedForward)``: ``norm``, ``fn.net.0`` (GEGLU in) and ``fn.net.2`` (out)."""
    return [*_norm_rows(f"{src}.norm", f"{dst}.mlp_norm"),
            *_norm_rows(f"{src}.fn.net.0", f"{dst}.mlp.fc1"), *_norm_rows(f"{src}.fn.net.2", f"{dst}.mlp.fc2")]


def _cross_rows(src: str, dst: str, perm: Tensor | None = None) -> list[Row]:
    return [*_norm_rows(f"{src}.norm", f"{dst}.q_norm"), *_norm_rows(f"{src}.norm_context", f"{dst}.kv_norm", perm),
            *_attention_rows(src, dst, perm=perm)]


def _self_rows(src: str, dst: str) -> list[Row]:
    """``self_attns.{j}`` (a pair ``[PreNorm(Attention), PreNorm(FeedForward)]``) -> our self-attention block."""
    return [*_norm_rows(f"{src}.0.norm", f"{dst}.attention_norm"), *_attention_rows(f"{src}.0", dst),
            *_ff_rows(f"{src}.1", dst)]


def fourier_permutation(data_channels: int, axes: int, bands: int) -> Tensor:
    """Index into the peer's context channels for each of ours: ours are ``[data, pos_1..pos_d, sin (axis-major,
    band-minor), cos (same)]`` (official), the peer's ``[data, per axis: sin_1..sin_K, cos_1..cos_K, pos]``."""
    c, per = data_channels, 2 * bands + 1
    raw = [c + a * per + 2 * bands for a in range(axes)]
    sin = [c + a * per + k for a in range(axes) for k in range(bands)]
    cos = [c + a * per + bands + k for a in range(axes) for k in range(bands)]
    return torch.tensor(list(range(c)) + raw + sin + cos)


def _tied(state: Mapping[str, Tensor], first: int, others: list[int], given: bool | None) -> bool:
    """Whether ``layers.{i}`` for ``i`` in ``others`` repeat ``layers.{first}`` (``weight_tie_layers``): as
    ``given`` (checked), else inferred from the tensors."""
    if not others:
        return bool(given)
    pairs = [(k.replace(f"layers.{first}.", f"layers.{i}.", 1), k) for i in others
             for k in state if k.startswith(f"layers.{first}.")]
    if given is None:
        return all(torch.equal(state[a], state[b]) for a, b in pairs)
    if given:
        check_tied(state, pairs, source=PEER, setting="weight_tie_layers")
    return given


def _refuse_common(s: Settings, state: Mapping[str, Tensor]) -> None:
    if any(k.startswith("attn_residuals.") for k in state) or s.get("attn_residual"):
        s.refuse("attn_residual", True, "the attention-pooled residual over earlier blocks has no counterpart here")
    inverted = s.get("inverted_cross_attn", False)
    if inverted not in (False, None) and not (isinstance(inverted, (list, tuple)) and not any(inverted)):
        s.refuse("inverted_cross_attn", inverted, "slot-attention style cross-attention (softmax over the "
                 "latents) has no counterpart here")


def _fourier_preprocessor(s: Settings, context: int) -> tuple[ImagePreprocessorConfig | None, int, Tensor | None]:
    """(preprocessor, input channels, context permutation) of a ``Perceiver`` with ``context`` channels."""
    if not s.bool("fourier_encode_data", True):
        return None, context, None
    axes = s.int("input_axis", 2)
    if axes != 2:
        s.refuse("input_axis", axes, "with fourier_encode_data=True only 2-D inputs (images) have a Fourier "
                 "preprocessor here; convert with fourier_encode_data=false and pass the features as tokens")
    bands, channels = s.int("num_freq_bands"), s.int("input_channels")
    if bands is None and channels is None:
        raise ConfigError(f"{PEER}: give num_freq_bands or input_channels (the file fixes only their sum: "
                          f"{context} context channels = input_channels + input_axis * (2 * num_freq_bands + 1))")
    if bands is None:
        bands = (context - channels - axes) // (2 * axes)
    if channels is None:
        channels = context - axes * (2 * bands + 1)
    if channels < 1 or bands < 1 or channels + axes * (2 * bands + 1) != context:
        raise ConfigError(f"{PEER}: input_channels={channels}, num_freq_bands={bands} do not give the file's "
                          f"{context} context channels")
    max_freq = s.number("max_freq")
    if max_freq is None or max_freq != int(max_freq) or max_freq < 1:
        s.refuse("max_freq", max_freq, "needs an integer >= 1 (our Fourier features take integer max_resolution)")
    size = s.get("image_size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ConfigError(f"{PEER}: give image_size [height, width] (the peer encodes any size at run time; our "
                          f"Fourier preprocessor is built for one), got {size!r}")
    prep = ImagePreprocessorConfig(image_size=tuple(size), in_channels=channels, prep_type="pixels",
                                   spatial_downsample=1, position_encoding="fourier", num_bands=bands,
                                   max_resolution=(int(max_freq),) * 2)
    return prep, context, fourier_permutation(channels, axes, bands)


def _encoder(s: Settings, state: Mapping[str, Tensor], *, cross: str, self0: str, **fields: Any) -> EncoderConfig:
    """Widths and heads of the encoder from the latents and the first cross- and self-attention."""
    n, d = shape(state, "latents", PEER)
    cross_inner = shape(state, f"{cross}.fn.to_q.weight", PEER)[0]
    self_inner = shape(state, f"{self0}.0.fn.to_q.weight", PEER)[0]
    cross_heads, latent_heads = s.int("cross_heads", 1), s.int("latent_heads", 8)
    heads_split(cross_inner, cross_heads, s.int("cross_dim_head"), ("cross_heads", "cross_dim_head"), PEER)
    heads_split(self_inner, latent_heads, s.int("latent_dim_head"), ("latent_heads", "latent_dim_head"), PEER)
    return EncoderConfig(num_latents=n, num_latent_channels=d, num_cross_attend_heads=cross_heads,
                         num_self_attend_heads=latent_heads, cross_attend_widening_factor=4,
                         self_attend_widening_factor=4, qk_channels=self_inner, v_channels=self_inner,
                         cross_attend_qk_channels=cross_inner, cross_attend_v_channels=cross_inner,
                         use_query_residual=True, qkv_bias=False, **fields)


def perceiver_conversion(state: Mapping[str, Tensor], s: Settings) -> tuple[PerceiverIOConfig, list[Row], list[str]]:
    """Config, key table and allowed-unused (tied duplicate) keys of a peer ``Perceiver``."""
    _refuse_common(s, state)
    layers = _indices(state, r"layers\.(\d+)\.cross_attn\.norm\.weight")
    per_block = len(_indices(state, r"layers\.0\.self_attns\.(\d+)\.0\.norm\.weight"))
    depth = s.int("depth", len(layers))
    if layers != list(range(depth)) or per_block == 0:
        raise ConfigError(f"{PEER}: the file has layers {layers} with {per_block} self-attentions each, "
                          f"expected depth={depth} layers 0..{depth - 1} with self_per_cross_attn >= 1")
    if s.int("self_per_cross_attn", per_block) != per_block:
        s.refuse("self_per_cross_attn", s.get("self_per_cross_attn"), f"the file has {per_block} per block")
    if "to_logits.2.weight" not in state or not s.bool("final_classifier_head", True):
        s.refuse("final_classifier_head", False, "our models end in a head; build the peer with its head (our "
                 "model's forward_features returns the latents)")
    tied = _tied(state, 1, layers[2:], s.bool("weight_tie_layers"))
    context = shape(state, "layers.0.cross_attn.norm_context.weight", PEER)[0]
    prep, channels, perm = _fourier_preprocessor(s, context)
    sharing = "all_but_first" if tied else "none"
    encoder = _encoder(s, state, cross="layers.0.cross_attn", self0="layers.0.self_attns.0", layout="interleaved",
                       num_blocks=depth, num_self_attends_per_block=per_block, cross_attend_sharing=sharing,
                       self_attend_sharing=sharing)
    num_classes = shape(state, "to_logits.2.weight", PEER)[0]
    decoder = DecoderConfig(type="projection", num_outputs=num_classes, projection_norm=True)
    config = PerceiverIOConfig(preprocessor=prep, input_channels=None if prep else channels, encoder=encoder,
                               decoder=decoder, activation="geglu")
    kept = sorted(set(encoder.cross_attend_schedule()))
    rows: list[Row] = [("latents", "encoder.latents", None)]
    for ours in kept:  # module ``ours`` is first used by peer layer ``ours`` (0 and 1 when tied)
        rows += _cross_rows(f"layers.{ours}.cross_attn", f"encoder.cross_attends.{ours}", perm)
        rows += _ff_rows(f"layers.{ours}.cross_ff", f"encoder.cross_attends.{ours}")
        rows += [row for j in range(per_block)
                 for row in _self_rows(f"layers.{ours}.self_attns.{j}", f"encoder.self_attends.{ours * per_block + j}")]
    rows += [*_norm_rows("to_logits.1", "decoder.norm"), *_norm_rows("to_logits.2", "decoder.output")]
    unused = [k for k in state if re.match(r"layers\.(\d+)\.", k) and int(k.split(".")[1]) not in kept]
    return config, rows, unused


def perceiver_io_conversion(state: Mapping[str, Tensor], s: Settings) -> tuple[PerceiverIOConfig, list[Row], list[str]]:
    """Config, key table and allowed-unused (tied duplicate) keys of a peer ``PerceiverIO``."""
    _refuse_common(s, state)
    layers = _indices(state, r"layers\.(\d+)\.self_attns\.0\.0\.norm\.weight")
    depth = s.int("depth", len(layers))
    if layers != list(range(depth)):
        raise ConfigError(f"{PEER}: the file has latent layers {layers}, expected depth={depth} layers")
    tied = _tied(state, 0, layers[1:], s.bool("weight_tie_layers"))
    encoder = _encoder(s, state, cross="cross_attend_block.cross_attn", self0="layers.0.self_attns.0",
                       layout="io", num_blocks=depth if tied else 1,
                       num_self_attends_per_block=1 if tied else depth)
    dim = shape(state, "cross_attend_block.cross_attn.norm_context.weight", PEER)[0]
    queries_dim = shape(state, "decoder_cross_attn.norm.weight", PEER)[0]
    decoder_inner = shape(state, "decoder_cross_attn.fn.to_q.weight", PEER)[0]
    decoder_ff = "decoder_ff.norm.weight" in state
    if s.bool("decoder_ff", decoder_ff) != decoder_ff:
        s.refuse("decoder_ff", s.get("decoder_ff"), f"the file {'has' if decoder_ff else 'lacks'} decoder_ff.*")
    final = "to_logits.weight" in state
    decoder = DecoderConfig(type="basic", external_queries=True, position_encoding="none",
                            num_query_channels=queries_dim,
                            num_outputs=shape(state, "to_logits.weight", PEER)[0] if final else 1,
                            final_project=final, num_heads=encoder.num_cross_attend_heads, qk_channels=decoder_inner,
                            v_channels=decoder_inner, widening_factor=4, use_query_residual=False,
                            use_mlp=decoder_ff, qkv_bias=False)
    config = PerceiverIOConfig(input_channels=dim, encoder=encoder, decoder=decoder, activation="geglu")
    rows: list[Row] = [("latents", "encoder.latents", None),
                       *_cross_rows("cross_attend_block.cross_attn", "encoder.cross_attends.0"),
                       *_ff_rows("cross_attend_block.cross_ff", "encoder.cross_attends.0")]
    rows += [row for i in (layers[:1] if tied else layers)
             for row in _self_rows(f"layers.{i}.self_attns.0", f"encoder.self_attends.{i}")]
    rows += _cross_rows("decoder_cross_attn", "decoder.cross_attend")
    if decoder_ff:
        rows += _ff_rows("decoder_ff", "decoder.cross_attend")
    if final:
        rows += _norm_rows("to_logits", "decoder.output")
    unused = [k for k in state if tied and k.startswith("layers.") and not k.startswith("layers.0.")]
    return config, rows, unused


def convert_lucidrains_state_dict(state: Mapping[str, Tensor], settings: Mapping[str, Any] | None = None) -> PerceiverIO:
    """Our model (eval mode) computing what the peer model with this ``state_dict()`` computes.

    ``settings``: the peer's constructor arguments the shapes do not fix (``cross_heads`` / ``latent_heads``, peer
    defaults 1 / 8; for a ``Perceiver`` with ``fourier_encode_data``: ``max_freq``, ``num_freq_bands`` or
    ``input_channels``, and our ``image_size``), plus optionally ``model`` (``'Perceiver'`` / ``'PerceiverIO'``,
    else detected). Inputs: the peer's channels-last ``(B, H, W, C)`` image is our NCHW ``x.permute(0, 3, 1, 2)``;
    tokens ``(B, M, C)`` are the same; the peer's ``PerceiverIO(data, queries=q)`` is our ``model(data, queries=q)``.
    Raises :class:`~perceivers.core.errors.ConfigError` naming the setting or keys that do not fit.
    """
    model = (settings or {}).get("model") or detect_model(state)
    if model not in ("Perceiver", "PerceiverIO"):
        raise ConfigError(f"{PEER}: model={model!r} is invalid: expected 'Perceiver' or 'PerceiverIO'")
    if model != detect_model(state):
        raise ConfigError(f"{PEER}: model={model!r} but the state dict is a {detect_model(state)}")
    s = Settings(f"{PEER} {model}", settings, PERCEIVER_SETTINGS if model == "Perceiver" else IO_SETTINGS)
    build = perceiver_conversion if model == "Perceiver" else perceiver_io_conversion
    config, rows, unused = build(state, s)
    ours = apply_table(state, rows, source=f"{PEER} {model}", unused_ok=unused)
    return build_loaded(PerceiverIO, config, ours, source=f"{PEER} {model}")


def convert_lucidrains_file(path: str | Path, settings: Mapping[str, Any] | None = None) -> PerceiverIO:
    """:func:`convert_lucidrains_state_dict` of a ``torch.save(model.state_dict(), path)`` file."""
    return convert_lucidrains_state_dict(read_state_dict_file(path), settings)


__all__ = ["convert_lucidrains_file", "convert_lucidrains_state_dict", "detect_model", "fourier_permutation"]
