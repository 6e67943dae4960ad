"""The declarative module tables of the official Perceiver IO Haiku trees.

Each row maps a Haiku *module* path to one of our module prefixes with a kind that fixes the parameter names and
the tensor transform (:mod:`perceivers.converters.haiku`). The names follow Haiku's naming rules
(docs/checkpoints.md#haiku-naming-rules) as the official colabs create the modules.
"""

from __future__ import annotations

from perceivers.core.errors import ConfigError
from perceivers.models.perceiver_io.config import PerceiverIOConfig

ModuleRow = tuple[str, str, str]  # (haiku module path, our module prefix, kind)

_LINEARS = (("attention/linear", "attention.q_proj"), ("attention/linear_1", "attention.k_proj"),
            ("attention/linear_2", "attention.v_proj"), ("attention/linear_3", "attention.o_proj"),
            ("mlp/linear", "mlp.fc1"), ("mlp/linear_1", "mlp.fc2"))


def cross_attention_rows(hk: str, ours: str) -> list[ModuleRow]:
    """Official ``CrossAttention`` at Haiku path ``hk`` -> our ``CrossAttentionBlock`` at ``ours``."""
    rows = [(f"{hk}/layer_norm", f"{ours}.q_norm", "layer_norm"), (f"{hk}/layer_norm_1", f"{ours}.kv_norm", "layer_norm"),
            (f"{hk}/layer_norm_2", f"{ours}.mlp_norm", "layer_norm")]
    return rows + [(f"{hk}/{h}", f"{ours}.{o}", "linear") for h, o in _LINEARS]


def self_attention_rows(hk: str, ours: str) -> list[ModuleRow]:
    """Official ``SelfAttention`` at ``hk`` -> our ``SelfAttentionBlock`` at ``ours``."""
    rows = [(f"{hk}/layer_norm", f"{ours}.attention_norm", "layer_norm"), (f"{hk}/layer_norm_1", f"{ours}.mlp_norm", "layer_norm")]
    return rows + [(f"{hk}/{h}", f"{ours}.{o}", "linear") for h, o in _LINEARS]


def haiku_suffix(index: int) -> str:
    """Haiku's name for the ``index``-th module of a type: '', '_1', '_2', ..."""
    return "" if index == 0 else f"_{index}"


def encoder_rows(num_self_attends_per_block: int, scope: str = "perceiver_encoder") -> list[ModuleRow]:
    rows = [(f"{scope}/~/trainable_position_encoding", "encoder.latents", "table")]
    rows += cross_attention_rows(f"{scope}/~/cross_attention", "encoder.cross_attends.0")
    for i in range(num_self_attends_per_block):
        rows += self_attention_rows(f"{scope}/~/self_attention{haiku_suffix(i)}", f"encoder.self_attends.{i}")
    return rows


def classification_decoder_rows() -> list[ModuleRow]:
    hk = "classification_decoder/~/basic_decoder"
    return [(f"{hk}/~/trainable_position_encoding", "decoder.query_pos.pos_embs", "table"),
            *cross_attention_rows(f"{hk}/cross_attention", "decoder.cross_attend"),
            (f"{hk}/output", "decoder.output", "linear")]


def image_preprocessor_rows(prep_type: str, position_encoding: str, project_pos_dim: int) -> list[ModuleRow]:
    hk = "image_preprocessor"
    rows: list[ModuleRow] = []
    if prep_type == "conv":
        down = f"{hk}/~/conv2_d_downsample/~"
        rows += [(f"{down}/conv", "preprocessor.conv.convs.0", "conv"),
                 (f"{down}/batchnorm", "preprocessor.conv.batchnorms.0", "batchnorm"),
                 (f"{down}/batchnorm/~/mean_ema", "preprocessor.conv.batchnorms.0.running_mean", "ema"),
                 (f"{down}/batchnorm/~/var_ema", "preprocessor.conv.batchnorms.0.running_var", "ema")]
    elif prep_type == "conv1x1":
        rows.append((f"{hk}/~/conv2_d", "preprocessor.conv1x1", "conv"))
    if position_encoding == "trainable":
        rows.append((f"{hk}/~_build_network_inputs/trainable_position_encoding",
                     "preprocessor.position.encoding.pos_embs", "table"))
    if project_pos_dim > 0:
        rows.append((f"{hk}/~_build_network_inputs/position_encoding_projector/linear",
                     "preprocessor.position.projection", "linear"))
    return rows


def language_mlm_rows(num_self_attends_per_block: int) -> list[ModuleRow]:
    """Official MLM colab (``language_perceiver_io_bytes.pickle``): ``embed/embeddings [262, C]``, the
    top-level input ``trainable_position_encoding``, the encoder, a standalone ``basic_decoder`` (no
    output linear) and ``embedding_decoder/bias [262]``; the logits reuse ``embed/embeddings``."""
    return [("embed", "preprocessor.embedding.weight", "embed"),
            ("trainable_position_encoding", "preprocessor.position.pos_embs", "table"),
            *encoder_rows(num_self_attends_per_block),
            ("basic_decoder/~/trainable_position_encoding", "decoder.query_pos.pos_embs", "table"),
            *cross_attention_rows("basic_decoder/cross_attention", "decoder.cross_attend"),
            ("embedding_decoder", "embedding_decoder.bias", "bias")]


def flow_rows(num_self_attends_per_block: int) -> list[ModuleRow]:
    """Official optical-flow colab (``optical_flow_checkpoint.pystate``): ``image_preprocessor/patches_linear``
    (``w [54, 64]``), the encoder, and ``flow_decoder/~/basic_decoder/{cross_attention, output}`` (``output``
    ``w [322, 2]``); the decoder's Fourier queries and the flow preprocessor have no other parameters."""
    hk = "flow_decoder/~/basic_decoder"
    return [("image_preprocessor/patches_linear", "preprocessor.image.patches_linear", "linear"),
            *encoder_rows(num_self_attends_per_block),
            *cross_attention_rows(f"{hk}/cross_attention", "decoder.cross_attend"),
            (f"{hk}/output", "decoder.output", "linear")]


#: Our modality kind -> official postprocessor module name.
POSTPROCESSOR_NAMES = {"audio": "audio_postprocessor", "video": "projection_postprocessor",
                       "label": "classification_postprocessor"}


def multimodal_rows(config: PerceiverIOConfig) -> list[ModuleRow]:
    """Official multimodal autoencoder (``video_autoencoding_checkpoint.pystate``); names (docs/checkpoints.md,
    "Haiku naming rules") for modality ``{m}`` of the config's multimodal preprocessor:

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
    rows: list[ModuleRow] = []
    seen: dict[str, int] = {}
    for name, m in config.preprocessor.modalities.items():  # sorted names
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


def model_rows(config: PerceiverIOConfig) -> list[ModuleRow]:
    """The module table for a Perceiver IO config: an ImageNet-style image classifier, the language MLM, optical
    flow or the multimodal autoencoder (chosen by its preprocessor)."""
    kind = config.preprocessor_type if isinstance(config, PerceiverIOConfig) else "other"
    if kind == "multimodal":
        return multimodal_rows(config)
    if kind == "text" and config.is_mlm:
        return language_mlm_rows(config.encoder.num_self_attends_per_block)
    if kind == "flow":
        return flow_rows(config.encoder.num_self_attends_per_block)
    if kind != "image" or config.decoder.type != "classification" or config.encoder.layout != "io":
        raise ConfigError("Haiku conversion supports Perceiver IO image classifiers (io encoder, classification "
                         "decoder, image preprocessor), the language MLM, optical flow and the multimodal "
                         "autoencoder")
    p = config.preprocessor
    return (image_preprocessor_rows(p.prep_type, p.position_encoding, p.project_pos_dim)
            + encoder_rows(config.encoder.num_self_attends_per_block) + classification_decoder_rows())


def config_kind(config: PerceiverIOConfig) -> str:
    """The released model whose kind ``config`` is (the keys of
    :data:`perceivers.converters.haiku_infer.KIND_LABELS`); ``''`` for another model."""
    kind = config.preprocessor_type if isinstance(config, PerceiverIOConfig) else None
    if kind == "image":
        return {"conv": "perceiver-io-imagenet-conv", "conv1x1": "perceiver-io-imagenet-learned"}.get(
            config.preprocessor.prep_type, "perceiver-io-imagenet-fourier")
    return {"text": "perceiver-io-language-mlm", "flow": "perceiver-io-flow",
            "multimodal": "perceiver-io-multimodal-kinetics"}.get(kind, "")
