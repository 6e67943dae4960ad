"""Hugging Face ``transformers`` Perceiver folders <-> ``perceivers`` folders.

An HF folder is what ``save_pretrained`` writes: ``config.json`` (``model_type='perceiver'``, one entry
in ``architectures``) and ``model.safetensors`` (a legacy ``pytorch_model.bin`` is read only with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects). Tensors are renamed with
the declarative tables of :mod:`perceivers.converters.hf_keys`; configs are translated by the small
explicit functions below. Supported heads: ``PerceiverForImageClassificationFourier``,
``PerceiverForMaskedLM``, ``PerceiverForSequenceClassification``,
``PerceiverForImageClassificationLearned``, ``PerceiverForImageClassificationConvProcessing``,
``PerceiverForOpticalFlow`` (config translation in :mod:`perceivers.converters.hf_flow`),
``PerceiverForMultimodalAutoencoding`` (key table and config translation in
:mod:`perceivers.converters.hf_multimodal`).

Semantics (items HF-n of docs/checkpoints.md, "Where we differ from Hugging Face transformers"):
by default a converted model keeps the OFFICIAL DeepMind computation:

- tanh-approximated GELU (``activation='gelu_tanh'``), whatever HF's ``hidden_act`` says (HF defaults
  to exact GELU, item 1);
- the learned-position image classifier's decoder has no query residual (official; HF turns it on, item 6);
- attention-probability dropout 0 (HF configs store 0.1, item 3; never inherited silently);
- the conv classifier keeps TF-SAME conv/pool padding (``conv_padding='tf_same'``, 56x56 tokens at 224;
  HF pads (3, 3) and does not pad the pool: 55x55, item 7);
- the flow model returns flow in pixels (``flow_scale_factor=20``, the colab's x20; HF returns pixels / 20,
  item 14).

Kernels (item 8): HF's original converter spatially transposed every conv kernel, so the HF Hub checkpoint
``deepmind/vision-perceiver-conv`` stores its 7x7 kernel as (O, I, W, H). ``undo_hf_kernel_transpose=True``
swaps the last two kernel axes back (use it for that checkpoint and its fine-tunes, with the faithful
default, to recover the official network); it is off by default because HF models built or trained with
transformers itself (random init, local training) are not transposed.

With ``hf_compat=True`` the converted model reproduces HF's numbers instead: activation from
``hidden_act`` (``gelu`` -> ``gelu``, ``gelu_pytorch_tanh``/``gelu_new`` -> ``gelu_tanh``), query
residual in the learned decoder, ``attention_dropout_prob`` from ``attention_probs_dropout_prob``,
``conv_padding='hf'`` for the conv classifier, ``flow_scale_factor=1.0`` for the flow model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perceivers.converters.hf_flow import FLOW, flow_config_from_hf, flow_fields_for_hf
from perceivers.converters.hf_keys import HEAD_TABLES, expand_rows, map_state_dict
from perceivers.converters.hf_multimodal import (
    MULTIMODAL,
    MULTIMODAL_TABLE,
    hf_multimodal_config,
    multimodal_config_to_hf,
)
from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.core.files import read_json_object, safe_torch_load
from perceivers.decoders import DecoderConfig
from perceivers.encoders import EncoderConfig
from perceivers.models.hub import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    from_pretrained,
    load_state_dict_strict,
    write_weights_folder,
)
from perceivers.models.perceiver_io import PerceiverIO, PerceiverIOConfig
from perceivers.preprocessors import ImagePreprocessorConfig, TextPreprocessorConfig

FOURIER = "PerceiverForImageClassificationFourier"
LEARNED = "PerceiverForImageClassificationLearned"
MLM = "PerceiverForMaskedLM"
SEQ_CLS = "PerceiverForSequenceClassification"
CONV = "PerceiverForImageClassificationConvProcessing"
SUPPORTED = (FOURIER, MLM, SEQ_CLS, LEARNED, CONV, FLOW, MULTIMODAL)
NOT_SUPPORTED_YET = ("PerceiverModel",)
_TABLES = {**HEAD_TABLES, MULTIMODAL: MULTIMODAL_TABLE}
#: Model classes with no transformers equivalent -> the family name used in errors.
_FAMILY_NAMES = {"PerceiverAR": "Perceiver AR", "HiP": "HiP", "HiPClassifier": "HiP"}

#: HF ``hidden_act`` -> our activation (used with ``hf_compat=True``).
HF_TO_OURS_ACTIVATION = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "relu": "relu"}
#: Our activation -> HF ``hidden_act`` (``to-hf``).
OURS_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}

# Values HF hard-codes per head (modeling_perceiver); ``to-hf`` refuses configs that differ.
_HF_FOURIER = dict(num_bands=64, max_resolution=(224, 224))
_HF_CONV = dict(num_bands=64, max_resolution=(56, 56), num_channels=64)  # one conv+pool layer (downsample 4)
#: HF's conv classifier ignores ``config.image_size``; our config records the released training size.
_CONV_IMAGE_SIZE = (224, 224)
_HF_CONV_KERNEL = "perceiver.input_preprocessor.convnet.conv.weight"
_HF_LEARNED_CHANNELS = 256  # conv1x1 out channels, trainable position channels and projection width
_HF_MLM_HEADS, _HF_MLM_QK = 8, 8 * 32
_HF_DEFAULTS = dict(num_self_attention_heads=8, num_cross_attention_heads=8, qk_channels=None, v_channels=None,
                    cross_attention_shape_for_attention="kv", self_attention_widening_factor=1,
                    cross_attention_widening_factor=1, hidden_act="gelu", attention_probs_dropout_prob=0.1,
                    use_query_residual=True, num_latents=256, d_latents=1280, d_model=768, num_blocks=1,
                    num_self_attends_per_block=26, vocab_size=262, max_position_embeddings=2048, image_size=56)


# ----------------------------------------------------------------------------- HF config -> ours

def _get(hf: dict[str, Any], name: str) -> Any:
    return hf.get(name, _HF_DEFAULTS[name])


def hf_architecture(hf: dict[str, Any]) -> str:
    """The single supported HF head class named in ``architectures``; ``ConfigError`` otherwise."""
    if hf.get("model_type", "perceiver") != "perceiver":
        raise ConfigError(f"config.json has model_type={hf.get('model_type')!r}, expected 'perceiver'")
    archs = hf.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1:
        raise ConfigError(f"config.json must name exactly one class in 'architectures', got {archs!r}; "
                          f"supported: {', '.join(SUPPORTED)}")
    arch = archs[0]
    if arch in NOT_SUPPORTED_YET:
        raise ConfigError(f"HF architecture {arch} is not supported yet; supported: {', '.join(SUPPORTED)}")
    if arch not in SUPPORTED:
        raise ConfigError(f"unknown HF architecture {arch!r}; supported: {', '.join(SUPPORTED)}")
    return arch


def hf_num_labels(hf: dict[str, Any]) -> int:
    """Number of classes as ``transformers`` derives it (``id2label`` first, default 2)."""
    if isinstance(hf.get("id2label"), dict) and hf["id2label"]:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))


def hf_activation(hf: dict[str, Any], *, hf_compat: bool) -> str:
    """``gelu_tanh`` (official) unless ``hf_compat``, then the HF ``hidden_act`` translated."""
    if not hf_compat:
        return "gelu_tanh"
    act = _get(hf, "hidden_act")
    if act not in HF_TO_OURS_ACTIVATION:
        raise ConfigError(f"HF hidden_act={act!r} has no equivalent here; known: {sorted(HF_TO_OURS_ACTIVATION)}")
    return HF_TO_OURS_ACTIVATION[act]


def hf_encoder_config(hf: dict[str, Any], *, hf_compat: bool) -> EncoderConfig:
    """HF encoder fields -> :class:`EncoderConfig` (attention dropout only under ``hf_compat``)."""
    return EncoderConfig(
        num_latents=_get(hf, "num_latents"), num_latent_channels=_get(hf, "d_latents"),
        num_blocks=_get(hf, "num_blocks"), num_self_attends_per_block=_get(hf, "num_self_attends_per_block"),
        num_cross_attend_heads=_get(hf, "num_cross_attention_heads"),
        num_self_attend_heads=_get(hf, "num_self_attention_heads"),
        cross_attend_widening_factor=_get(hf, "cross_attention_widening_factor"),
        self_attend_widening_factor=_get(hf, "self_attention_widening_factor"),
        qk_channels=_get(hf, "qk_channels"), v_channels=_get(hf, "v_channels"),
        cross_attention_shape_for_attn=_get(hf, "cross_attention_shape_for_attention"),
        use_query_residual=_get(hf, "use_query_residual"),
        attention_dropout_prob=float(_get(hf, "attention_probs_dropout_prob")) if hf_compat else 0.0,
    )


def _classification_decoder(hf: dict[str, Any], *, use_query_residual: bool) -> DecoderConfig:
    return DecoderConfig(type="classification", num_outputs=hf_num_labels(hf), num_query_channels=_get(hf, "d_latents"),
                         use_query_residual=use_query_residual)


def _text_preprocessor(hf: dict[str, Any]) -> TextPreprocessorConfig:
    return TextPreprocessorConfig(vocab_size=_get(hf, "vocab_size"), num_channels=_get(hf, "d_model"),
                                  max_seq_len=_get(hf, "max_position_embeddings"))


def hf_config_to_ours(hf: dict[str, Any], *, hf_compat: bool = False) -> tuple[str, PerceiverIOConfig]:
    """Translate an HF ``config.json`` dict: ``(architecture, our config)``. See the module docstring for
    the faithful default versus ``hf_compat=True``."""
    arch = hf_architecture(hf)
    encoder = hf_encoder_config(hf, hf_compat=hf_compat)
    activation = hf_activation(hf, hf_compat=hf_compat)
    if arch == FLOW:
        return arch, flow_config_from_hf(hf, encoder=encoder, activation=activation, hf_compat=hf_compat)
    if arch == MULTIMODAL:
        return arch, hf_multimodal_config(hf, encoder=encoder, activation=activation, num_labels=hf_num_labels(hf))
    size = _get(hf, "image_size")
    if arch == FOURIER:
        prep = ImagePreprocessorConfig(image_size=(size, size), in_channels=3, prep_type="pixels", spatial_downsample=1,
                                       position_encoding="fourier", concat_pos=True, sine_only=False, **_HF_FOURIER)
        return arch, PerceiverIOConfig(preprocessor=prep, encoder=encoder, activation=activation,
                                       decoder=_classification_decoder(hf, use_query_residual=True))
    if arch == CONV:
        prep = ImagePreprocessorConfig(image_size=_CONV_IMAGE_SIZE, in_channels=3, prep_type="conv", spatial_downsample=4,
                                       conv2d_use_batchnorm=True, position_encoding="fourier", concat_pos=True,
                                       sine_only=False, conv_padding="hf" if hf_compat else "tf_same", **_HF_CONV)
        return arch, PerceiverIOConfig(preprocessor=prep, encoder=encoder, activation=activation,
                                       decoder=_classification_decoder(hf, use_query_residual=True))
    if arch == LEARNED:
        c = _HF_LEARNED_CHANNELS
        prep = ImagePreprocessorConfig(image_size=(size, size), in_channels=3, prep_type="conv1x1", spatial_downsample=1,
                                       num_channels=c, position_encoding="trainable", trainable_pos_channels=c,
                                       project_pos_dim=c, concat_or_add_pos="concat")
        # Official: no query residual in this decoder (docs/checkpoints.md, HF-6); HF: True.
        return arch, PerceiverIOConfig(preprocessor=prep, encoder=encoder, activation=activation,
                                       decoder=_classification_decoder(hf, use_query_residual=hf_compat))
    text = _text_preprocessor(hf)
    if arch == SEQ_CLS:
        decoder = _classification_decoder(hf, use_query_residual=True)
    else:  # MLM: HF hard-codes 8 heads, qk 8*32, v = d_model, no residual, no final projection
        decoder = DecoderConfig(type="basic", num_outputs=text.vocab_size, output_index_dims=(text.max_seq_len,),
                                position_encoding="trainable", num_query_channels=text.num_channels,
                                num_heads=_HF_MLM_HEADS, qk_channels=_HF_MLM_QK, v_channels=text.num_channels,
                                use_query_residual=False, final_project=False)
    return arch, PerceiverIOConfig(preprocessor=text, encoder=encoder, decoder=decoder, activation=activation)


# ----------------------------------------------------------------------------- our config -> HF

def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ConfigError(f"cannot express this model as an HF transformers Perceiver: {what}")


def _hf_encoder_fields(enc: EncoderConfig, activation: str) -> dict[str, Any]:
    _require(enc.layout == "io", f"encoder.layout={enc.layout!r} (HF has only the 'io' layout)")
    _require(activation in OURS_TO_HF_ACTIVATION, f"activation={activation!r} has no HF hidden_act")
    return {
        "num_latents": enc.num_latents, "d_latents": enc.num_latent_channels, "num_blocks": enc.num_blocks,
        "num_self_attends_per_block": enc.num_self_attends_per_block,
        "num_self_attention_heads": enc.num_self_attend_heads, "num_cross_attention_heads": enc.num_cross_attend_heads,
        "qk_channels": enc.qk_channels, "v_channels": enc.v_channels,
        "cross_attention_shape_for_attention": enc.cross_attention_shape_for_attn,
        "self_attention_widening_factor": enc.self_attend_widening_factor,
        "cross_attention_widening_factor": enc.cross_attend_widening_factor,
        "use_query_residual": enc.use_query_residual, "hidden_act": OURS_TO_HF_ACTIVATION[activation],
        "attention_probs_dropout_prob": enc.attention_dropout_prob,
    }


def _check_hf_classification_decoder(dec: DecoderConfig, latent_channels: int) -> None:
    _require(dec.num_query_channels == latent_channels and dec.num_heads == 1 and dec.widening_factor == 1
             and dec.qk_channels in (None, latent_channels) and dec.v_channels in (None, latent_channels),
             "HF's classification decoder has one d_latents-wide query, 1 head, qk = v = d_latents, widening 1")
    _require(dec.use_query_residual, "HF's classification decoders always use the query residual (a faithful "
             "learned-position model has none: convert it from HF with --hf-compat to get an HF-equivalent one)")


def ours_config_to_hf(config: PerceiverIOConfig) -> dict[str, Any]:
    """Our config -> an HF ``config.json`` dict (``architectures`` set); ``ConfigError`` (a ``ValueError``) if HF
    cannot express it, ``ConfigTypeError`` for a config of another family."""
    if not isinstance(config, PerceiverIOConfig):
        raise ConfigTypeError(f"expected a PerceiverIOConfig, got {type(config).__name__}")
    fields = _hf_encoder_fields(config.encoder, config.activation)
    dec = config.decoder
    latent = config.encoder.num_latent_channels
    kind = config.preprocessor_type
    if kind == "text":
        p = config.preprocessor
        fields.update(d_model=p.num_channels, vocab_size=p.vocab_size, max_position_embeddings=p.max_seq_len)
        if config.is_mlm:
            _require(dec.num_heads == _HF_MLM_HEADS and dec.qk_channels == _HF_MLM_QK
                     and dec.v_channels in (None, p.num_channels) and dec.widening_factor == 1
                     and not dec.use_query_residual and p.vocab_size == dec.num_outputs,
                     f"HF's MLM decoder has {_HF_MLM_HEADS} heads, qk {_HF_MLM_QK}, v = d_model, no query residual")
            arch = MLM
        else:
            _check_hf_classification_decoder(dec, latent)
            arch = SEQ_CLS
    elif kind in (None, "image"):
        p = config.preprocessor
        _require(p is not None and p.in_channels == 3 and p.concat_or_add_pos == "concat",
                 "HF image classifiers take RGB images and concatenate positions")
        _require(p.spatial_downsample == (4 if p.prep_type == "conv" else 1),
                 "HF image classifiers downsample by 4 (one conv+pool layer) for 'conv', otherwise not at all")
        _require(dec.type == "classification", f"decoder.type={dec.type!r} (HF image classifiers use 'classification')")
        _check_hf_classification_decoder(dec, latent)
        h, w = p.image_size
        if p.prep_type == "pixels" and p.position_encoding == "fourier":
            _require(p.num_bands == _HF_FOURIER["num_bands"] and p.max_resolution == _HF_FOURIER["max_resolution"]
                     and p.concat_pos and not p.sine_only, "HF's Fourier classifier hard-codes 64 bands, "
                     "max_resolution (224, 224), concat_pos, not sine_only")
            arch = FOURIER
        elif p.prep_type == "conv1x1" and p.position_encoding == "trainable":
            c = _HF_LEARNED_CHANNELS
            _require(p.num_channels == c and p.trainable_pos_channels == c and p.project_pos_dim == c and h == w,
                     f"HF's learned classifier hard-codes {c} conv/position/projection channels and square images")
            arch = LEARNED
        elif p.prep_type == "conv" and p.position_encoding == "fourier":
            _require(p.num_bands == _HF_CONV["num_bands"] and p.max_resolution == _HF_CONV["max_resolution"]
                     and p.num_channels == _HF_CONV["num_channels"] and p.conv2d_use_batchnorm and p.concat_pos
                     and not p.sine_only, "HF's conv classifier hard-codes 64 conv channels with BatchNorm, 64 bands, "
                     "max_resolution (56, 56), concat_pos, not sine_only")
            _require(p.conv_padding == "hf", "HF's conv classifier pads the conv (3, 3) and not the max-pool; a "
                     "faithful conv_padding='tf_same' model would compute different features there (convert it "
                     "from HF with --hf-compat to get an HF-equivalent one)")
            arch = CONV
        else:
            raise ConfigError(f"cannot express this model as an HF transformers Perceiver: prep_type={p.prep_type!r} "
                              f"with {p.position_encoding!r} positions (supported: pixels+fourier, conv1x1+trainable, "
                              "conv+fourier)")
        fields["image_size"] = h
    elif kind == "flow":
        fields.update(flow_fields_for_hf(config))
        arch = FLOW
    elif kind == "multimodal":
        fields.update(multimodal_config_to_hf(config))
        arch = MULTIMODAL
    else:
        raise ConfigError(f"cannot express this model as an HF transformers Perceiver: HF has no {kind!r} "
                          f"preprocessor")
    if dec.type == "classification":
        fields["id2label"] = {str(i): f"LABEL_{i}" for i in range(dec.num_outputs)}
        fields["label2id"] = {f"LABEL_{i}": i for i in range(dec.num_outputs)}
    return {"architectures": [arch], "model_type": "perceiver", **fields}


# ----------------------------------------------------------------------------- files

def read_hf_folder(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config dict, state dict)`` of an HF folder; never unpickles arbitrary objects."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"HF checkpoint folder {str(directory)!r} does not exist")
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: an HF folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    hf = read_json_object(cfg_path)
    weights, legacy = folder / WEIGHTS_NAME, folder / "pytorch_model.bin"
    if weights.is_file():
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"{weights} is not a readable safetensors file: {exc}") from exc
    elif legacy.is_file():
        try:  # weights_only: plain tensors and containers only, no arbitrary code; never torch's unsafe advice
            state = safe_torch_load(legacy)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (re-save the weights as {WEIGHTS_NAME})") from None
        if not isinstance(state, dict):
            raise ConfigError(f"{legacy} does not hold a state dict")
    else:
        raise FileNotFoundError(f"{weights} is missing (sharded checkpoints are not supported; "
                                f"re-save with save_pretrained(max_shard_size='100GB'))")
    return hf, state


def _undo_transpose(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Swap the two spatial axes of the HF conv classifier's 7x7 kernel: ``(O, I, W, H) -> (O, I, H, W)``.

    HF's original converter reversed all axes of the Haiku HWIO kernel, so ``deepmind/vision-perceiver-conv``
    holds a spatially transposed kernel (docs/checkpoints.md, HF-8). Returns a new dict; other tensors
    are the same objects. ``ConfigError`` (a ``ValueError``) if the state has no 4-D conv kernel.
    """
    kernel = state.get(_HF_CONV_KERNEL)
    if not isinstance(kernel, Tensor) or kernel.dim() != 4:
        raise ConfigError(f"undo_hf_kernel_transpose needs the 4-D conv kernel {_HF_CONV_KERNEL!r} "
                          f"(only PerceiverForImageClassificationConvProcessing has one)")
    return {**state, _HF_CONV_KERNEL: kernel.transpose(2, 3).contiguous()}


def convert_hf_folder(src: str | os.PathLike, *, hf_compat: bool = False,
                      undo_hf_kernel_transpose: bool = False) -> nn.Module:
    """Read an HF ``transformers`` Perceiver folder and return our model (eval mode).

    Default: official semantics (tanh GELU, no query residual in the learned-position decoder, attention
    dropout 0). ``hf_compat=True``: HF's numbers (activation from ``hidden_act``, query residual on,
    ``attention_probs_dropout_prob`` kept, HF conv padding). ``undo_hf_kernel_transpose=True`` swaps the conv
    classifier's kernel axes back (for ``deepmind/vision-perceiver-conv``; see the module docstring). Raises
    ``FileNotFoundError`` for missing files and ``ValueError`` (:class:`~perceivers.core.errors.ConfigError` for what
    this module checks) for an unreadable file, an unsupported architecture or missing / unexpected / mis-shaped
    tensors.
    """
    hf, hf_state = read_hf_folder(src)
    arch, config = hf_config_to_ours(hf, hf_compat=hf_compat)
    if undo_hf_kernel_transpose:
        if arch != CONV:
            raise ConfigError(f"{src}: undo_hf_kernel_transpose applies only to {CONV}, not {arch}")
        hf_state = _undo_transpose(hf_state)
    mapping = expand_rows(_TABLES[arch], num_self_attends_per_block=config.encoder.num_self_attends_per_block)
    try:
        state = map_state_dict(hf_state, mapping, source=f"HF {arch}")
        with torch.device("meta"):
            model = PerceiverIO(config)  # the task class the config names
        load_state_dict_strict(model, state, source=f"{src} ({arch})")
    except ValueError as exc:  # one line: the table/loader errors list one key per line
        raise ConfigError(f"{src}: " + "; ".join(line.strip() for line in str(exc).splitlines())) from exc
    return model.eval()


def convert_to_hf_folder(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write our folder ``src`` as an HF folder (``config.json`` + ``model.safetensors``) loadable by
    ``transformers``' ``from_pretrained``. ``out`` is written as one unit
    (:func:`perceivers.core.files.atomic_folder`): an interrupted conversion leaves the old ``out`` whole, never new
    weights beside an old config. ``ConfigError`` for a model HF cannot express."""
    model = from_pretrained(src)
    if not isinstance(model.config, PerceiverIOConfig):
        family = _FAMILY_NAMES.get(type(model).__name__, type(model).__name__)
        raise ConfigError(f"{src} holds a {family} model ({type(model).__name__}): transformers has no {family}; "
                          f"only Perceiver IO models have a transformers Perceiver equivalent (convert to-hf writes "
                          f"{', '.join(SUPPORTED)})")
    hf = ours_config_to_hf(model.config)
    arch = hf["architectures"][0]
    mapping = expand_rows(_TABLES[arch], num_self_attends_per_block=model.config.encoder.num_self_attends_per_block)
    reverse = {ours: theirs for theirs, ours in mapping.items()}
    state = map_state_dict(model.state_dict(), reverse, source="perceivers")
    return write_weights_folder(out, state, hf)
