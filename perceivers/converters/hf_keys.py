"""Declarative state-dict key table between HF ``transformers`` Perceiver models and ``perceivers``.

Scope: ``PerceiverForImageClassificationFourier`` -> :class:`~perceivers.models.perceiver_io.model.PerceiverIO`
built with a ``pixels`` image preprocessor + Fourier positions, an ``io`` encoder and a
``classification`` decoder (the Fourier/pixels preprocessor has no parameters on either side);
``PerceiverForImageClassificationLearned`` -> the same with a ``conv1x1`` preprocessor and trainable,
projected positions; ``PerceiverForImageClassificationConvProcessing`` -> the same with a ``conv``
preprocessor (7x7 conv + BatchNorm) and Fourier positions; ``PerceiverForMaskedLM`` / ``PerceiverForSequenceClassification`` ->
:class:`~perceivers.models.perceiver_io.language.PerceiverIOLanguage` (text preprocessor, MLM decoder
with tied embedding decoder, or classification decoder).

The table is a list of ``(hf_pattern, ours_pattern)`` rows. Patterns may contain placeholders that
are expanded over every value in :data:`PLACEHOLDERS` (``{param}`` -> ``weight``/``bias``) or given
at call time (``{i}`` -> ``0 .. num_self_attends_per_block-1``). Per-layer rows are written once
for a generic attention *layer* (:data:`CROSS_ATTENTION_LAYER`, :data:`SELF_ATTENTION_LAYER`) and
placed under a prefix with :func:`prefixed`, so other HF heads (MLM, learned / conv image
classification, optical flow, multimodal) only add their own prefix rows, and the inverse mapping
(ours -> HF) is the same expanded dict reversed.

Tensor semantics: both sides are PyTorch modules, so every tensor keeps its layout and shape
(``N`` latents, ``D`` latent channels, ``C_q``/``C_kv`` query/key-value input channels, ``qk``/``v``
attention widths, ``w`` MLP widening factor):

- ``perceiver.embeddings.latents`` -> ``encoder.latents``: ``(N, D)``.
- ``attention.self.query`` / ``key`` / ``value`` -> ``attention.q_proj`` / ``k_proj`` / ``v_proj``:
  weights ``(qk, C_q)``, ``(qk, C_kv)``, ``(v, C_kv)``; ``attention.output.dense`` -> ``attention.o_proj``:
  ``(C_q, v)``.
- ``attention.self.layernorm1`` (on the queries) -> ``q_norm`` (cross) / ``attention_norm`` (self):
  ``(C_q,)``; ``attention.self.layernorm2`` (on keys/values, cross only) -> ``kv_norm``: ``(C_kv,)``;
  ``layernorm`` (pre-MLP) -> ``mlp_norm``: ``(C_q,)``.
- ``mlp.dense1`` / ``mlp.dense2`` -> ``mlp.fc1`` / ``mlp.fc2``: ``(w*C_q, C_q)`` / ``(C_q, w*C_q)``.
- ``perceiver.decoder.decoder.output_position_encodings.position_embeddings`` ->
  ``decoder.query_pos.pos_embs``: ``(1, C_query)``; ``...final_layer`` -> ``decoder.output``:
  ``(num_labels, C_query)``.

The mapping does not copy tensors: the returned dict holds the very tensors of ``hf_state``.
Numerical caveats of loading HF weights (not key-related): HF's default ``hidden_act="gelu"`` is
exact GELU, so build the ``PerceiverIOConfig`` with ``activation="gelu"`` for HF-exact outputs
(``"gelu_pytorch_tanh"`` corresponds to our official default ``"gelu_tanh"``); HF hard-codes
``max_resolution=(224, 224)`` for the Fourier image preprocessor.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor

KeyRow = tuple[str, str]

#: Placeholders with a fixed set of values. ``{i}`` (self-attention layer index) is given at call time.
PLACEHOLDERS: dict[str, tuple[str, ...]] = {"param": ("weight", "bias")}

# Rows shared by every HF ``PerceiverLayer`` (attention linears, pre-MLP LayerNorm, MLP).
_LAYER_COMMON: tuple[KeyRow, ...] = (
    ("attention.self.query.{param}", "attention.q_proj.{param}"),
    ("attention.self.key.{param}", "attention.k_proj.{param}"),
    ("attention.self.value.{param}", "attention.v_proj.{param}"),
    ("attention.output.dense.{param}", "attention.o_proj.{param}"),
    ("layernorm.{param}", "mlp_norm.{param}"),
    ("mlp.dense1.{param}", "mlp.fc1.{param}"),
    ("mlp.dense2.{param}", "mlp.fc2.{param}"),
)

#: HF cross-attention ``PerceiverLayer`` -> our ``CrossAttentionBlock``.
CROSS_ATTENTION_LAYER: tuple[KeyRow, ...] = (
    ("attention.self.layernorm1.{param}", "q_norm.{param}"),
    ("attention.self.layernorm2.{param}", "kv_norm.{param}"),
    *_LAYER_COMMON,
)

#: HF self-attention ``PerceiverLayer`` (``layernorm2`` is an ``Identity``) -> our ``SelfAttentionBlock``.
SELF_ATTENTION_LAYER: tuple[KeyRow, ...] = (
    ("attention.self.layernorm1.{param}", "attention_norm.{param}"),
    *_LAYER_COMMON,
)


def prefixed(rows: Iterable[KeyRow], hf_prefix: str, ours_prefix: str) -> tuple[KeyRow, ...]:
    """``rows`` with ``hf_prefix`` / ``ours_prefix`` prepended to the HF / our pattern."""
    return tuple((hf_prefix + hf, ours_prefix + ours) for hf, ours in rows)


#: Encoder (latents, one cross-attend, the shared self-attention block); common to every HF head.
ENCODER: tuple[KeyRow, ...] = (
    ("perceiver.embeddings.latents", "encoder.latents"),
    *prefixed(CROSS_ATTENTION_LAYER, "perceiver.encoder.cross_attention.", "encoder.cross_attends.0."),
    *prefixed(SELF_ATTENTION_LAYER, "perceiver.encoder.self_attends.{i}.", "encoder.self_attends.{i}."),
)

_HF_BASIC_DECODER = "perceiver.decoder.decoder."  # PerceiverClassificationDecoder wraps a PerceiverBasicDecoder

#: HF ``PerceiverClassificationDecoder`` -> our ``ClassificationDecoder``.
CLASSIFICATION_DECODER: tuple[KeyRow, ...] = (
    (_HF_BASIC_DECODER + "output_position_encodings.position_embeddings", "decoder.query_pos.pos_embs"),
    *prefixed(CROSS_ATTENTION_LAYER, _HF_BASIC_DECODER + "decoding_cross_attention.", "decoder.cross_attend."),
    (_HF_BASIC_DECODER + "final_layer.{param}", "decoder.output.{param}"),
)

#: HF ``PerceiverTextPreprocessor`` (two ``nn.Embedding``s) -> our ``TextPreprocessor``: byte embedding
#: ``(V, C)`` and input position table ``(max_seq_len, C)``, both unchanged.
TEXT_PREPROCESSOR: tuple[KeyRow, ...] = (
    ("perceiver.input_preprocessor.embeddings.weight", "preprocessor.embedding.weight"),
    ("perceiver.input_preprocessor.position_embeddings.weight", "preprocessor.position.pos_embs"),
)

#: HF MLM ``PerceiverBasicDecoder`` (no final layer) + ``PerceiverEmbeddingDecoder`` -> our ``BasicDecoder``
#: + ``EmbeddingDecoder``. The tied embedding matrix is the preprocessor's; only the bias ``(V,)`` is extra.
MLM_DECODER: tuple[KeyRow, ...] = (
    ("perceiver.decoder.output_position_encodings.position_embeddings", "decoder.query_pos.pos_embs"),
    *prefixed(CROSS_ATTENTION_LAYER, "perceiver.decoder.decoding_cross_attention.", "decoder.cross_attend."),
    ("embedding_decoder.bias", "embedding_decoder.bias"),
)

#: HF learned-position ``PerceiverImagePreprocessor`` (conv1x1 + trainable positions + projection) -> our
#: ``ImagePreprocessor`` (``prep_type='conv1x1'``, ``position_encoding='trainable'``, ``project_pos_dim``):
#: 1x1 kernel ``(C, C_in, 1, 1)`` (OIHW both sides, no spatial transpose issue), position table
#: ``(H*W, C_pos)``, projection ``(project_pos_dim, C_pos)``.
LEARNED_IMAGE_PREPROCESSOR: tuple[KeyRow, ...] = (
    ("perceiver.input_preprocessor.convnet_1x1.{param}", "preprocessor.conv1x1.{param}"),
    ("perceiver.input_preprocessor.position_embeddings.position_embeddings", "preprocessor.position.encoding.pos_embs"),
    ("perceiver.input_preprocessor.positions_projection.{param}", "preprocessor.position.projection.{param}"),
)

#: HF conv ``PerceiverImagePreprocessor`` (one ``Conv2DDownsample`` layer: 7x7/2 conv without bias +
#: BatchNorm; Fourier positions have no parameters) -> our ``ImagePreprocessor`` (``prep_type='conv'``,
#: ``spatial_downsample=4``). Kernel ``(C, C_in, 7, 7)`` OIHW both sides (the HF Hub checkpoint
#: ``deepmind/vision-perceiver-conv`` stores it spatially transposed, (O, I, W, H): see the
#: ``undo_hf_kernel_transpose`` option of ``perceivers.converters.hf.convert_hf_folder``); BatchNorm ``(C,)`` tensors and the scalar
#: ``num_batches_tracked`` unchanged.
CONV_IMAGE_PREPROCESSOR: tuple[KeyRow, ...] = (
    ("perceiver.input_preprocessor.convnet.conv.weight", "preprocessor.conv.convs.0.weight"),
    *((f"perceiver.input_preprocessor.convnet.batchnorm.{name}", f"preprocessor.conv.batchnorms.0.{name}")
      for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
)

#: HF ``PerceiverForOpticalFlow``: patches preprocessor ``conv_after_patches`` ``Linear(54 -> 64)`` ->
#: our ``FlowPreprocessor``'s ``patches_linear`` ``(64, 54)``; ``PerceiverOpticalFlowDecoder`` wraps a
#: ``PerceiverBasicDecoder`` (Fourier queries built but unused: no parameters) -> our ``FlowDecoder``
#: (cross-attend with 322-wide queries, ``output`` ``(2, 322)``).
FLOW_PREPROCESSOR: tuple[KeyRow, ...] = (
    ("perceiver.input_preprocessor.conv_after_patches.{param}", "preprocessor.image.patches_linear.{param}"),
)
FLOW_DECODER: tuple[KeyRow, ...] = (
    *prefixed(CROSS_ATTENTION_LAYER, _HF_BASIC_DECODER + "decoding_cross_attention.", "decoder.cross_attend."),
    (_HF_BASIC_DECODER + "final_layer.{param}", "decoder.output.{param}"),
)

#: Full tables per HF head class. The Fourier pixels preprocessor has no parameters.
HEAD_TABLES: dict[str, tuple[KeyRow, ...]] = {
    "PerceiverForImageClassificationLearned": LEARNED_IMAGE_PREPROCESSOR + ENCODER + CLASSIFICATION_DECODER,
    "PerceiverForImageClassificationFourier": ENCODER + CLASSIFICATION_DECODER,
    "PerceiverForImageClassificationConvProcessing": CONV_IMAGE_PREPROCESSOR + ENCODER + CLASSIFICATION_DECODER,
    "PerceiverForMaskedLM": TEXT_PREPROCESSOR + ENCODER + MLM_DECODER,
    "PerceiverForSequenceClassification": TEXT_PREPROCESSOR + ENCODER + CLASSIFICATION_DECODER,
    "PerceiverForOpticalFlow": FLOW_PREPROCESSOR + ENCODER + FLOW_DECODER,
}


def _fields(pattern: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]


def expand_rows(rows: Iterable[KeyRow], *, num_self_attends_per_block: int) -> dict[str, str]:
    """Expand placeholder rows into a bijective ``{hf_key: our_key}`` dict.

    Raises ``ValueError`` on an unknown placeholder, on two rows producing the same HF key or the
    same key of ours, or if the two patterns of a row use different placeholders.
    """
    if isinstance(num_self_attends_per_block, bool) or not isinstance(num_self_attends_per_block, int) \
            or num_self_attends_per_block < 1:
        raise ValueError(f"num_self_attends_per_block must be an int >= 1, got {num_self_attends_per_block!r}")
    values: dict[str, Sequence[str]] = {**PLACEHOLDERS, "i": [str(i) for i in range(num_self_attends_per_block)]}
    mapping: dict[str, str] = {}
    targets: set[str] = set()
    for hf_pattern, ours_pattern in rows:
        names = sorted(set(_fields(hf_pattern)))
        if names != sorted(set(_fields(ours_pattern))):
            raise ValueError(f"row ({hf_pattern!r}, {ours_pattern!r}) uses different placeholders on each side")
        unknown = [n for n in names if n not in values]
        if unknown:
            raise ValueError(f"row ({hf_pattern!r}, {ours_pattern!r}) has unknown placeholders {unknown}")
        for combo in itertools.product(*(values[n] for n in names)):
            subs = dict(zip(names, combo))
            hf_key, ours_key = hf_pattern.format(**subs), ours_pattern.format(**subs)
            if hf_key in mapping or ours_key in targets:
                raise ValueError(f"key table maps {hf_key!r} -> {ours_key!r} twice or ambiguously")
            mapping[hf_key] = ours_key
            targets.add(ours_key)
    return mapping


def map_state_dict(state: Mapping[str, Tensor], mapping: Mapping[str, str], *, source: str = "HF") -> dict[str, Tensor]:
    """Rename ``state`` with ``mapping`` strictly (usable in either direction with a reversed mapping).

    Raises ``ValueError`` listing every key of ``state`` the mapping does not know ("unexpected")
    and every mapping source key absent from ``state`` (whose target would be left unfilled).
    """
    unexpected = sorted(k for k in state if k not in mapping)
    missing = sorted(f"{src} (-> {dst})" for src, dst in mapping.items() if src not in state)
    if unexpected or missing:
        lines = []
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected {source} key(s) with no mapping:")
            lines += [f"  {k}" for k in unexpected]
        if missing:
            lines.append(f"{len(missing)} {source} key(s) missing, so these target keys would be left unfilled:")
            lines += [f"  {k}" for k in missing]
        raise ValueError("\n".join(lines))
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"{source} state entry {key!r} is a {type(value).__name__}, not a torch.Tensor")
        out[mapping[key]] = value
    return out


def hf_to_perceivers_state_dict(hf_state: dict[str, Tensor], *, num_self_attends_per_block: int,
                                head: str = "PerceiverForImageClassificationFourier") -> dict[str, Tensor]:
    """Map the state dict of the HF class ``head`` (a key of :data:`HEAD_TABLES`) to our keys.

    ``PerceiverForImageClassificationFourier`` maps to :class:`PerceiverIO`; ``PerceiverForMaskedLM``
    and ``PerceiverForSequenceClassification`` map to
    :class:`~perceivers.models.perceiver_io.language.PerceiverIOLanguage` (MLM / classification decoder).

    Args:
        hf_state: ``model.state_dict()`` of the HF model (``perceiver.embeddings.latents (N, D)``,
            ``perceiver.encoder.cross_attention.*``, ``perceiver.encoder.self_attends.{i}.*``,
            ``perceiver.decoder.decoder.*``). Tensors are passed through unchanged (same objects,
            same ``(out, in)`` linear layout and shapes).
        num_self_attends_per_block: HF ``config.num_self_attends_per_block`` (the number of distinct
            self-attention layers; ``num_blocks`` shares them and adds no keys).

    Returns:
        ``{our_key: tensor}`` ready for ``load_state_dict(..., strict=True)`` on a model whose config
        matches (``encoder.num_self_attends_per_block`` equal, ``layout='io'``, and the head's
        preprocessor and decoder).

    Raises:
        ValueError: listing every HF key the table does not map and every expected HF key that is
            absent (i.e. a key of ours that would stay unfilled).
    """
    if head not in HEAD_TABLES:
        raise ValueError(f"no key table for HF class {head!r}; known: {sorted(HEAD_TABLES)}")
    mapping = expand_rows(HEAD_TABLES[head], num_self_attends_per_block=num_self_attends_per_block)
    return map_state_dict(hf_state, mapping, source="HF")
