"""Frozen, validated configurations for Perceiver and Perceiver IO models.

Every config is a ``@dataclass(frozen=True, kw_only=True)`` whose ``__post_init__`` raises
``ValueError``/``TypeError`` naming the field, the value and what was expected. ``to_dict`` /
``from_dict`` round-trip through ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_divisible,
    check_int,
    check_optional_int,
    check_prob,
    check_scale,
    fail,
    normalize_int_tuple,
)
from perceivers.layers.blocks import ACTIVATIONS
from perceivers.layers.position import fourier_output_size

PREP_TYPES = ("pixels", "patches", "conv1x1", "conv")
POSITION_TYPES = ("fourier", "trainable", "none")


@dataclass(frozen=True, kw_only=True)
class ImagePreprocessorConfig(ConfigBase):
    """Image preprocessor (official ``ImagePreprocessor``); images are NCHW floats.

    ``prep_type``: ``pixels`` (keep every ``spatial_downsample``-th pixel), ``patches`` (space to
    depth, channel order (dh, dw, c), optional ``Linear`` to ``num_channels``), ``conv1x1``
    (``Conv2d(1x1, stride=spatial_downsample)``), ``conv`` (log4(spatial_downsample) x [7x7/2 conv
    TF-SAME, BatchNorm, ReLU, 3x3/2 max-pool SAME]). Positions are built over the post-prep grid.

    ``conv_padding`` (``prep_type='conv'`` only): ``'tf_same'`` (official, default: conv padded (2, 3) and
    max-pool SAME at 224, 224 -> 56x56 = 3,136 tokens) or ``'hf'``, an HF-compatibility switch that
    reproduces HF transformers' deviation (conv padded (3, 3) on both sides, max-pool 3x3/2 unpadded:
    224 -> 55x55 = 3,025 tokens). Used by ``Conv2DDownsample`` and :func:`prep_grid` alike.
    """

    image_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    prep_type: str = "conv"
    spatial_downsample: int = 4
    num_channels: int = 64
    conv_after_patching: bool = False
    conv2d_use_batchnorm: bool = True
    position_encoding: str = "fourier"
    num_bands: int = 64
    max_resolution: tuple[int, ...] | None = None
    concat_pos: bool = True
    sine_only: bool = False
    trainable_pos_channels: int = 256
    pos_init_scale: float = 0.02
    project_pos_dim: int = 0
    concat_or_add_pos: str = "concat"
    conv_padding: str = "tf_same"

    def __post_init__(self) -> None:
        normalize_int_tuple(self, "image_size", self.image_size)
        if len(self.image_size) != 2:
            fail("image_size", self.image_size, "(height, width)")
        check_int("in_channels", self.in_channels)
        check_choice("prep_type", self.prep_type, PREP_TYPES)
        check_int("spatial_downsample", self.spatial_downsample)
        check_int("num_channels", self.num_channels)
        check_choice("position_encoding", self.position_encoding, POSITION_TYPES)
        check_int("num_bands", self.num_bands)
        normalize_int_tuple(self, "max_resolution", self.max_resolution, allow_none=True)
        if self.max_resolution is not None and len(self.max_resolution) != 2:
            fail("max_resolution", self.max_resolution, "two entries (height, width) or None")
        check_int("trainable_pos_channels", self.trainable_pos_channels)
        check_int("project_pos_dim", self.project_pos_dim, minimum=0)
        check_choice("concat_or_add_pos", self.concat_or_add_pos, ("concat", "add"))
        check_choice("conv_padding", self.conv_padding, CONV_PADDINGS)
        check_scale("pos_init_scale", self.pos_init_scale)
        check_bools(self, "conv_after_patching", "conv2d_use_batchnorm", "concat_pos", "sine_only")
        if self.prep_type == "conv":
            layers = math.log(self.spatial_downsample, 4)
            if self.spatial_downsample < 4 or abs(layers - round(layers)) > 1e-9:
                fail("spatial_downsample", self.spatial_downsample, "a power of 4 (>= 4) for prep_type='conv'")
        h, w = self.image_size
        if self.prep_type == "patches" and (h % self.spatial_downsample or w % self.spatial_downsample):
            fail("image_size", self.image_size, f"divisible by spatial_downsample={self.spatial_downsample} for patches")
        if self.concat_or_add_pos == "add" and self.position_encoding != "none":
            if self.pos_channels != self.feature_channels:
                fail("concat_or_add_pos", "add", f"position channels ({self.pos_channels}) equal to feature "
                      f"channels ({self.feature_channels})")

    @property
    def grid(self) -> tuple[int, int]:
        """Post-prep grid ``(H', W')`` for ``image_size``."""
        return prep_grid(self, *self.image_size)

    @property
    def feature_channels(self) -> int:
        """Channels of the prepared features before positions are added."""
        if self.prep_type == "pixels":
            return self.in_channels
        if self.prep_type == "patches":
            return self.num_channels if self.conv_after_patching else self.in_channels * self.spatial_downsample**2
        return self.num_channels

    @property
    def pos_channels(self) -> int:
        if self.position_encoding == "none":
            return 0
        if self.project_pos_dim > 0:
            return self.project_pos_dim
        if self.position_encoding == "trainable":
            return self.trainable_pos_channels
        return fourier_output_size(2, self.num_bands, concat_pos=self.concat_pos, sine_only=self.sine_only)

    @property
    def output_channels(self) -> int:
        """Channels of the tokens fed to the encoder."""
        if self.concat_or_add_pos == "add":
            return self.feature_channels
        return self.feature_channels + self.pos_channels


#: ``ImagePreprocessorConfig.conv_padding`` values: official TF-SAME, or HF transformers' padding.
CONV_PADDINGS = ("tf_same", "hf")


def prep_grid(cfg: ImagePreprocessorConfig, h: int, w: int) -> tuple[int, int]:
    """Token grid after preprocessing an ``h x w`` image."""
    s = cfg.spatial_downsample
    if cfg.prep_type == "conv":
        for _ in range(round(math.log(s, 4))):
            h, w = -(-h // 2), -(-w // 2)  # conv 7x7/2, SAME or HF's (3, 3) padding: ceil(h/2) either way
            if cfg.conv_padding == "hf":
                h, w = max((h - 3) // 2 + 1, 0), max((w - 3) // 2 + 1, 0)  # max-pool 3x3/2 unpadded (HF)
            else:
                h, w = -(-h // 2), -(-w // 2)  # max-pool 3x3/2, SAME
        return h, w
    if cfg.prep_type == "patches":
        return h // s, w // s
    return -(-h // s), -(-w // s)  # pixels slicing and conv1x1 SAME: ceil(h/s)


@dataclass(frozen=True, kw_only=True)
class EncoderConfig(ConfigBase):
    """Perceiver encoder: latents, cross-attend(s) and a latent self-attention stack.

    ``layout='io'`` (Perceiver IO): one cross-attend, then the stack of ``num_self_attends_per_block``
    layers applied ``num_blocks`` times with shared weights. ``layout='interleaved'`` (original
    Perceiver): a cross-attend before every block; the first cross-attend has its own weights and
    cross-attends 2..``num_blocks`` share one module (Perceiver paper Tab. 7).
    """

    num_latents: int = 512
    num_latent_channels: int = 1024
    num_blocks: int = 8
    num_self_attends_per_block: int = 6
    num_cross_attend_heads: int = 1
    num_self_attend_heads: int = 8
    cross_attend_widening_factor: int = 1
    self_attend_widening_factor: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    cross_attention_shape_for_attn: str = "kv"
    use_query_residual: bool = True
    dropout_prob: float = 0.0
    attention_dropout_prob: float = 0.0
    latent_init_scale: float = 0.02
    layout: str = "io"

    def __post_init__(self) -> None:
        for name in ("num_latents", "num_latent_channels", "num_blocks", "num_self_attends_per_block",
                     "num_cross_attend_heads", "num_self_attend_heads", "cross_attend_widening_factor",
                     "self_attend_widening_factor"):
            check_int(name, getattr(self, name))
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        check_choice("cross_attention_shape_for_attn", self.cross_attention_shape_for_attn, ("kv", "q"))
        check_choice("layout", self.layout, ("io", "interleaved"))
        check_prob("dropout_prob", self.dropout_prob)
        check_prob("attention_dropout_prob", self.attention_dropout_prob)
        check_scale("latent_init_scale", self.latent_init_scale)
        check_bools(self, "use_query_residual")
        self_qk = self.qk_channels or self.num_latent_channels
        check_divisible("self-attention qk_channels", self_qk, "num_self_attend_heads", self.num_self_attend_heads)
        check_divisible("self-attention v_channels", self.v_channels or self_qk, "num_self_attend_heads",
                         self.num_self_attend_heads)

    def cross_attention_channels(self, input_channels: int) -> tuple[int, int]:
        """(qk, v) widths of the encoder cross-attention for inputs of ``input_channels``."""
        qk = self.qk_channels
        if qk is None:
            qk = input_channels if self.cross_attention_shape_for_attn == "kv" else self.num_latent_channels
        return qk, self.v_channels or qk


DECODER_TYPES = ("classification", "projection", "basic")


@dataclass(frozen=True, kw_only=True)
class DecoderConfig(ConfigBase):
    """Decoder. ``classification``: one learned query (official ``ClassificationDecoder``);
    ``projection``: mean over latents then a zero-initialised ``Linear`` (original Perceiver);
    ``basic``: queries from position encodings over ``output_index_dims`` (official ``BasicDecoder``).
    """

    type: str = "classification"
    num_outputs: int = 1000
    output_index_dims: tuple[int, ...] = (1,)
    position_encoding: str = "trainable"
    num_query_channels: int = 1024
    num_bands: int = 64
    max_resolution: tuple[int, ...] | None = None
    concat_pos: bool = True
    sine_only: bool = False
    query_init_scale: float = 0.02
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    concat_preprocessed_input: bool = False
    final_project: bool = True

    def __post_init__(self) -> None:
        check_choice("type", self.type, DECODER_TYPES)
        check_scale("query_init_scale", self.query_init_scale)
        check_bools(self, "concat_pos", "sine_only", "use_query_residual", "concat_preprocessed_input",
                     "final_project")
        check_int("num_outputs", self.num_outputs)
        normalize_int_tuple(self, "output_index_dims", self.output_index_dims)
        check_choice("position_encoding", self.position_encoding, POSITION_TYPES)
        check_int("num_query_channels", self.num_query_channels)
        check_int("num_bands", self.num_bands)
        normalize_int_tuple(self, "max_resolution", self.max_resolution, allow_none=True)
        if self.max_resolution is not None and len(self.max_resolution) != len(self.output_index_dims):
            fail("max_resolution", self.max_resolution, f"{len(self.output_index_dims)} entries, one per output dim")
        for name in ("num_heads", "widening_factor"):
            check_int(name, getattr(self, name))
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        if self.type == "classification" and self.position_encoding != "trainable":
            fail("position_encoding", self.position_encoding, "'trainable' for a classification decoder")
        if self.type != "basic" and not self.final_project:
            fail("final_project", self.final_project, f"True for a {self.type!r} decoder (only 'basic' can skip "
                  "the projection)")
        if self.type == "basic" and self.position_encoding == "none" and not self.concat_preprocessed_input:
            fail("position_encoding", "none", "'fourier' or 'trainable' unless concat_preprocessed_input=True")

    def query_channels(self, input_channels: int) -> int:
        """Width of the decoder queries (``input_channels`` = preprocessed input without positions)."""
        if self.position_encoding == "trainable":
            c = self.num_query_channels
        elif self.position_encoding == "fourier":
            c = fourier_output_size(len(self.output_index_dims), self.num_bands, concat_pos=self.concat_pos,
                                    sine_only=self.sine_only)
        else:
            c = 0
        return c + (input_channels if self.concat_preprocessed_input else 0)


@dataclass(frozen=True, kw_only=True)
class PerceiverIOConfig(ConfigBase):
    """A whole model: optional image preprocessor, encoder, decoder and the MLP activation.

    With ``preprocessor=None`` the model takes tokens ``(B, M, input_channels)``; otherwise NCHW
    images and ``input_channels`` is derived from the preprocessor. ``activation`` defaults to the
    official tanh-approximated GELU; HF transformers uses exact GELU (``"gelu"``).
    """

    _nested: ClassVar[dict[str, type]] = {
        "preprocessor": ImagePreprocessorConfig, "encoder": EncoderConfig, "decoder": DecoderConfig,
    }

    preprocessor: ImagePreprocessorConfig | None = None
    input_channels: int | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        self._coerce_nested(optional=("preprocessor",))
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.preprocessor is None:
            if self.input_channels is None:
                fail("input_channels", None, "an int when preprocessor is None")
            check_int("input_channels", self.input_channels)
        else:
            derived = self.preprocessor.output_channels
            if self.input_channels not in (None, derived):
                fail("input_channels", self.input_channels, f"None or {derived} (derived from the preprocessor)")
            object.__setattr__(self, "input_channels", derived)
        enc = self.encoder
        qk, v = enc.cross_attention_channels(self.input_channels)
        check_divisible("encoder cross-attention qk_channels", qk, "num_cross_attend_heads", enc.num_cross_attend_heads)
        check_divisible("encoder cross-attention v_channels", v, "num_cross_attend_heads", enc.num_cross_attend_heads)
        dec = self.decoder
        if dec.type != "projection":
            dqk = dec.qk_channels or enc.num_latent_channels
            check_divisible("decoder qk_channels", dqk, "decoder num_heads", dec.num_heads)
            check_divisible("decoder v_channels", dec.v_channels or dqk, "decoder num_heads", dec.num_heads)

    def replace(self, **changes: Any) -> "PerceiverIOConfig":
        if "preprocessor" in changes and "input_channels" not in changes and self.preprocessor is not None:
            changes["input_channels"] = None  # derived again from the new preprocessor
        return super().replace(**changes)

    @property
    def preprocessed_channels(self) -> int:
        """Channels of the preprocessed input *without* positions (for ``concat_preprocessed_input``)."""
        return self.preprocessor.feature_channels if self.preprocessor is not None else self.input_channels
