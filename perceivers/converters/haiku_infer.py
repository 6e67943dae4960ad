"""The configuration an official Perceiver IO Haiku parameter tree holds, read from its names and shapes.

The head kind comes from the module names (:func:`guess_model_name`); the registered model of that kind gives
the defaults, and every size the tree fixes overrides them (:func:`infer_overrides`):

- encoder: latents ``pos_embs [N, D]``; the number of self-attention layers (``self_attention``,
  ``self_attention_1``, ...); qk / v widths from the attention linears; MLP widening factors;
- image classifiers: input channels and conv / conv1x1 widths, Fourier bands (from the cross-attention input width),
  the learned position table (square grid) and its projection; the classification query width and classes;
- language MLM: vocabulary, embedding width, input and query lengths, decoder qk / v widths;
- optical flow: patch embedding width and Fourier bands;
- multimodal: per released modality (audio, image, label) classes, label query width, samples per audio patch,
  video channels, input and query Fourier bands; the common paddings; the decoder's output width.

What the tree cannot fix keeps the registered value: the number of heads (weights are the same for any head
count dividing the width), the number of blocks (one set of weights is applied ``num_blocks`` times), image
sizes and maximum resolutions of Fourier features, use of query residuals. ``convert haiku --heads`` / ``--set``
override them (docs/checkpoints.md#official-haiku-files).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from perceivers.converters.haiku_tables import POSTPROCESSOR_NAMES
from perceivers.core.errors import ConfigError

Tree = Mapping[str, Mapping[str, Any]]

#: Registered model -> how a message names that kind of model.
KIND_LABELS = {
    "perceiver-io-imagenet-fourier": "ImageNet classifier (pixels + Fourier positions)",
    "perceiver-io-imagenet-learned": "ImageNet classifier (conv1x1 + learned positions)",
    "perceiver-io-imagenet-conv": "ImageNet classifier (conv + BatchNorm + Fourier positions)",
    "perceiver-io-language-mlm": "language MLM",
    "perceiver-io-flow": "optical-flow model",
    "perceiver-io-multimodal-kinetics": "multimodal autoencoder",
}
#: Official ImageNet checkpoints, recognised by their preprocessor modules.
_IMAGENET_BY_MODULE = (("image_preprocessor/~/conv2_d_downsample/~/conv", "perceiver-io-imagenet-conv"),
                       ("image_preprocessor/~/conv2_d", "perceiver-io-imagenet-learned"))


def guess_model_name(params: Mapping[str, object]) -> str:
    """The registered model whose kind an official parameter tree holds (ImageNet classifiers, language MLM,
    flow, multimodal autoencoder); :class:`ConfigError` for a tree of no known kind."""
    if "embedding_decoder" in params:
        return "perceiver-io-language-mlm"
    if "flow_decoder/~/basic_decoder/output" in params:
        return "perceiver-io-flow"
    if "multimodal_decoder/~/basic_decoder/output" in params:
        return "perceiver-io-multimodal-kinetics"
    if "classification_decoder/~/basic_decoder/output" not in params:
        raise ConfigError("cannot tell which model these Haiku parameters belong to: no ImageNet classification, "
                          "MLM, flow or multimodal decoder module; pass the registered model name with --model")
    for module, name in _IMAGENET_BY_MODULE:
        if module in params:
            return name
    return "perceiver-io-imagenet-fourier"


def encoder_scope(params: Mapping[str, object]) -> str:
    """The multimodal colab names the encoder ``encoder``; every other colab ``perceiver_encoder``."""
    return "encoder" if "encoder/~/trainable_position_encoding" in params else "perceiver_encoder"


def _shape(tree: Tree, module: str, param: str) -> tuple[int, ...]:
    try:
        return tuple(tree[module][param].shape)
    except (KeyError, AttributeError, TypeError):
        raise ConfigError(f"the Haiku tree has no {module}/{param}, which a {_kind_hint(tree)} needs") from None


def _kind_hint(tree: Tree) -> str:
    try:
        return KIND_LABELS[guess_model_name(tree)]
    except ConfigError:
        return "Perceiver IO model"


def count_layers(tree: Tree, scope: str) -> int:
    """Self-attention layers of the shared block: ``self_attention``, ``self_attention_1``, ..."""
    n = 0
    while f"{scope}/~/self_attention{'' if n == 0 else f'_{n}'}/attention/linear" in tree:
        n += 1
    return n


def attention_widths(tree: Tree, scope: str) -> dict[str, int]:
    """Widths of an official ``CrossAttention`` / ``SelfAttention`` at ``scope``: query input, qk, key/value
    input, v, output and MLP hidden (``w [in, out]``)."""
    q_in, qk = _shape(tree, f"{scope}/attention/linear", "w")
    kv_in, _ = _shape(tree, f"{scope}/attention/linear_1", "w")
    _, v = _shape(tree, f"{scope}/attention/linear_2", "w")
    _, hidden = _shape(tree, f"{scope}/mlp/linear", "w")
    return {"q_in": q_in, "qk": qk, "kv_in": kv_in, "v": v, "hidden": hidden}


def _widening(hidden: int, width: int, what: str) -> int:
    if hidden % width:
        raise ConfigError(f"the Haiku tree's {what} MLP is {hidden} wide, not a multiple of its {width} inputs")
    return hidden // width


def _qk_v(qk: int, v: int, default: int) -> tuple[int | None, int | None]:
    """Explicit qk / v widths, None where they equal what the config's default gives."""
    qk_field = None if qk == default else qk
    return qk_field, None if v == qk else v


def infer_encoder(tree: Tree, scope: str) -> dict[str, Any]:
    """Encoder overrides (latents, layers, widths) and, under ``'input_channels'``, the cross-attention's input
    width (popped by the caller)."""
    num_latents, d = _shape(tree, f"{scope}/~/trainable_position_encoding", "pos_embs")
    layers = count_layers(tree, scope)
    cross = attention_widths(tree, f"{scope}/~/cross_attention")
    out: dict[str, Any] = {"num_latents": num_latents, "num_latent_channels": d, "num_self_attends_per_block": layers,
                               "cross_attend_widening_factor": _widening(cross["hidden"], d, "cross-attention")}
    if layers:
        first = attention_widths(tree, f"{scope}/~/self_attention")
        out["self_attend_widening_factor"] = _widening(first["hidden"], d, "self-attention")
        out["qk_channels"], out["v_channels"] = _qk_v(first["qk"], first["v"], d)
    if out.get("qk_channels") is None:
        out["cross_attention_shape_for_attn"] = "q" if cross["qk"] == d != cross["kv_in"] else "kv"
    out["input_channels"] = cross["kv_in"]
    return out


def infer_decoder(tree: Tree, scope: str, latent_channels: int) -> dict[str, Any]:
    """Cross-attention fields of a decoder at ``scope`` (``.../basic_decoder``): qk / v widths, widening."""
    a = attention_widths(tree, f"{scope}/cross_attention")
    qk, v = _qk_v(a["qk"], a["v"], latent_channels)
    return {"qk_channels": qk, "v_channels": v, "widening_factor": _widening(a["hidden"], a["q_in"], "decoder")}


def _fourier_bands(channels: int, dims: int, what: str) -> int:
    """Bands of a concatenated ``dims``-D sine/cosine encoding ``channels`` wide (``dims * (2 * bands + 1)``)."""
    bands, rest = divmod(channels - dims, 2 * dims)
    if rest or bands < 1:
        raise ConfigError(f"the Haiku tree's {what} leaves {channels} position channels, which is no "
                          f"{dims}-D Fourier encoding (expected {dims} * (2 * bands + 1))")
    return bands


def _image(tree: Tree, name: str, input_channels: int) -> dict[str, Any]:
    hk = "image_preprocessor"
    if name == "perceiver-io-imagenet-conv":
        _, _, cin, c = _shape(tree, f"{hk}/~/conv2_d_downsample/~/conv", "w")
        return {"in_channels": cin, "num_channels": c, "num_bands": _fourier_bands(input_channels - c, 2, "conv input")}
    if name == "perceiver-io-imagenet-fourier":
        return {"num_bands": _fourier_bands(input_channels - 3, 2, "RGB input")}
    _, _, cin, c = _shape(tree, f"{hk}/~/conv2_d", "w")
    n, pos = _shape(tree, f"{hk}/~_build_network_inputs/trainable_position_encoding", "pos_embs")
    side = math.isqrt(n)
    out = {"in_channels": cin, "num_channels": c, "trainable_pos_channels": pos, "project_pos_dim": 0}
    if side * side == n:
        out["image_size"] = (side, side)
    projector = f"{hk}/~_build_network_inputs/position_encoding_projector/linear"
    if projector in tree:
        out["project_pos_dim"] = _shape(tree, projector, "w")[1]
    return out


def infer_overrides(params: Tree, name: str) -> dict[str, Any]:
    """``create_model(name, **overrides)`` arguments that give the sizes ``params`` holds (see the module
    docstring); ``name`` is the kind from :func:`guess_model_name`."""
    scope = encoder_scope(params)
    encoder = infer_encoder(params, scope)
    input_channels = encoder.pop("input_channels")
    d = encoder["num_latent_channels"]
    if name == "perceiver-io-language-mlm":
        vocab, c = _shape(params, "embed", "embeddings")
        length, _ = _shape(params, "trainable_position_encoding", "pos_embs")
        queries, qc = _shape(params, "basic_decoder/~/trainable_position_encoding", "pos_embs")
        decoder = dict(num_outputs=vocab, output_index_dims=(queries,), num_query_channels=qc,
                       **infer_decoder(params, "basic_decoder", d))
        prep = {"vocab_size": vocab, "num_channels": c, "max_seq_len": length}
        return {"preprocessor": prep, "encoder": encoder, "decoder": decoder}
    if name == "perceiver-io-flow":
        _, c = _shape(params, "image_preprocessor/patches_linear", "w")
        _, outputs = _shape(params, "flow_decoder/~/basic_decoder/output", "w")
        prep = {"num_channels": c, "num_bands": _fourier_bands(input_channels - c, 2, "patch input")}
        decoder = dict(num_outputs=outputs, **infer_decoder(params, "flow_decoder/~/basic_decoder", d))
        return {"preprocessor": prep, "encoder": encoder, "decoder": decoder}
    if name == "perceiver-io-multimodal-kinetics":
        return infer_multimodal(params, encoder, input_channels)
    hk = "classification_decoder/~/basic_decoder"
    _, qc = _shape(params, f"{hk}/~/trainable_position_encoding", "pos_embs")
    _, classes = _shape(params, f"{hk}/output", "w")
    decoder = dict(num_outputs=classes, num_query_channels=qc, **infer_decoder(params, hk, d))
    return {"preprocessor": _image(params, name, input_channels), "encoder": encoder, "decoder": decoder}


def _modality(tree: Tree, m: Any, name: str, k: int, width: int, query_width: int) -> tuple[Any, int, int]:
    """One released-layout modality with the sizes the tree fixes: classes and label query width, samples per
    audio patch, video channels, input and query Fourier bands. Returns it with its input and query paddings."""
    pad = _shape(tree, f"multimodal_preprocessor/{name}_padding", "pos_embs")[-1]
    qpad = _shape(tree, f"multimodal_decoder/~decoder_query/{name}_padding", "pos_embs")[-1]
    channels, qchannels = width - pad, query_width - qpad
    post = f"{POSTPROCESSOR_NAMES[m.kind]}{'' if k == 0 else f'_{k}'}/linear"
    out = _shape(tree, post, "w")[-1]
    mask = m.mask_prob if f"multimodal_preprocessor/{name}_mask_token" in tree else None
    if m.kind == "label":
        suffix = "" if k == 0 else f"_{k}"
        query = _shape(tree, f"classification_decoder{suffix}/~/basic_decoder/~/trainable_position_encoding",
                       "pos_embs")[-1]
        return m.replace(num_classes=out, query_channels=query, mask_prob=mask), pad, qpad
    dims = m.num_position_dims
    if m.kind == "audio":
        fields = {"samples_per_patch": out}
        feature = out
    else:
        fields = {"in_channels": out}
        feature = m.temporal_patch * m.spatial_patch**2 * out
    bands = _fourier_bands(channels - feature, dims, f"{name} input")
    qbands = _fourier_bands(qchannels, dims, f"{name} query")
    return m.replace(**fields, num_bands=bands, query_num_bands=None if qbands == bands else qbands,
                     mask_prob=mask), pad, qpad


def infer_multimodal(tree: Tree, encoder: dict[str, Any], width: int) -> dict[str, Any]:
    """Overrides of the multimodal autoencoder: encoder, decoder widths and, for each of the released modalities
    (``audio``, ``image``, ``label``; frames, image size and sample count are not fixed by the weights), the sizes
    :func:`_modality` reads; the common paddings from the narrowest padding vectors."""
    from perceivers.models.registry import get_config

    base = get_config("perceiver-io-multimodal-kinetics")
    hk = "multimodal_decoder/~/basic_decoder"
    query_width = attention_widths(tree, f"{hk}/cross_attention")["q_in"]
    modalities, pads, qpads, seen = {}, [], [], {}
    for name, m in base.preprocessor.modalities.items():
        k = seen.get(m.kind, 0)
        seen[m.kind] = k + 1
        modalities[name], pad, qpad = _modality(tree, m, name, k, width, query_width)
        pads.append(pad)
        qpads.append(qpad)
    decoder = {"num_output_channels": _shape(tree, f"{hk}/output", "w")[-1], "min_padding_size": min(qpads),
               **infer_decoder(tree, hk, encoder["num_latent_channels"])}
    return {"preprocessor": {"modalities": modalities, "min_padding_size": min(pads)}, "encoder": encoder,
            "decoder": decoder}


def describe_config(config: Any, name: str) -> str:
    """``'a 12-layer, 256x1280-latent language MLM'`` for a Perceiver IO config of the kind ``name``."""
    e = config.encoder
    return (f"a {e.num_self_attends_per_block}-layer, {e.num_latents}x{e.num_latent_channels}-latent "
            f"{KIND_LABELS.get(name, 'Perceiver IO model')}")


def describe_tree(params: Tree) -> str:
    """The same description read from an official tree (its kind, layers and latents), or what can be told."""
    try:
        name = guess_model_name(params)
    except ConfigError:
        return "a tree of no known Perceiver IO kind"
    scope = encoder_scope(params)
    latents = params.get(f"{scope}/~/trainable_position_encoding", {}).get("pos_embs")
    shape = "x".join(map(str, latents.shape)) if hasattr(latents, "shape") else "?"
    return f"a {count_layers(params, scope)}-layer, {shape}-latent {KIND_LABELS[name]}"
