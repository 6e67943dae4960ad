"""Frozen, validated configurations of the multimodal Perceiver IO autoencoder and the raw-audio classifier.

A modality is described once, by :class:`ModalityConfig`: its ``kind`` fixes how it is read, queried and
written back (official ``io_processors.py`` / ``perceiver.py``, perceiver-io.md §9.3-9.5, §10.5):

- ``video``: input ``(B, T, H, W, C)`` floats; space-to-depth patches ``(dt, dh, dw)`` with channel order
  ``(dt, dh, dw, c)``, 3-D Fourier features over the patch grid ``(T/dt, H/dh, W/dw)``; decoder queries are
  3-D Fourier features over the *pixel* grid ``(T, H, W)``; output ``Linear(-> C)`` per pixel.
- ``audio``: input ``(B, S)`` or ``(B, S, 1)`` samples; patches of ``samples_per_patch`` samples, 1-D Fourier
  features over the patch index; queries 1-D Fourier features over the patches; output
  ``Linear(-> samples_per_patch)`` flattened back to samples.
- ``label``: input ``(B, K)`` (one-hot or probabilities) as one token of ``K`` channels, no positions; the
  query is a learned ``(1, query_channels)`` table; output ``Linear(-> K)`` logits.

Modality names come from the configuration only (the model code knows no name); they are processed in
sorted name order, as the official code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from perceivers.layers.blocks import ACTIVATIONS
from perceivers.layers.position import fourier_output_size
from perceivers.models.perceiver_io.config import (
    ConfigBase,
    DecoderConfig,
    EncoderConfig,
    check_bools,
    check_choice,
    check_divisible,
    check_int,
    check_optional_int,
    fail,
    normalize_int_tuple,
)

MODALITY_KINDS = ("video", "audio", "label")
#: Names a modality cannot take: they would shadow attributes of the ``ModuleDict``/``ParameterDict`` holding it.
_RESERVED = frozenset(dir(nn.ModuleDict())) | frozenset(dir(nn.ParameterDict()))


def _check_unit(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        fail(name, value, "a float in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class ModalityConfig(ConfigBase):
    """One modality: input patches and positions, mask token, decoder query and output layer.

    Fields used by ``kind``: video ``num_frames, image_size, in_channels, temporal_patch, spatial_patch``;
    audio ``num_samples, samples_per_patch``; label ``num_classes, query_channels``. The input grid
    (frames, image size, samples) may differ from the configured one at call time (Fourier positions are
    built over the actual grid, as the official code does); the decoder always queries the configured grid.

    ``num_bands`` / ``max_resolution``: input Fourier features (video default: the patch grid, as the
    released model's (16, 56, 56); audio default ``(num_samples,)``: the sample count, not the patch count,
    as released). ``query_num_bands`` / ``query_max_resolution``: decoder-query Fourier features (defaults:
    the input ones; the released colab uses the same (16, 56, 56) for both, although its queries lie on
    the 16x224x224 pixel grid).

    ``mask_prob``: ``None`` = no mask token. A float ``p`` in [0, 1] adds a learned ``(1, C_common)`` mask
    token that replaces each token of this modality with probability ``p`` **in training and evaluation
    alike** (official ``MultimodalPreprocessor``); ``p = 1`` always replaces it, so the label of the released
    Kinetics model is never seen and the autoencoder acts as a classifier.
    """

    kind: str
    num_frames: int = 16
    image_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    temporal_patch: int = 1
    spatial_patch: int = 4
    num_samples: int = 30720
    samples_per_patch: int = 16
    num_classes: int = 700
    num_bands: int = 32
    max_resolution: tuple[int, ...] | None = None
    query_num_bands: int | None = None
    query_max_resolution: tuple[int, ...] | None = None
    query_channels: int = 1024
    concat_pos: bool = True
    sine_only: bool = False
    mask_prob: float | None = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, MODALITY_KINDS)
        for name in ("num_frames", "in_channels", "temporal_patch", "spatial_patch", "num_samples",
                     "samples_per_patch", "num_classes", "num_bands", "query_channels"):
            check_int(name, getattr(self, name))
        check_optional_int("query_num_bands", self.query_num_bands)
        normalize_int_tuple(self, "image_size", self.image_size)
        if len(self.image_size) != 2:
            fail("image_size", self.image_size, "(height, width)")
        check_bools(self, "concat_pos", "sine_only")
        if self.mask_prob is not None:
            _check_unit("mask_prob", self.mask_prob)
        for name in ("max_resolution", "query_max_resolution"):
            normalize_int_tuple(self, name, getattr(self, name), allow_none=True)
            value = getattr(self, name)
            if value is not None and len(value) != self.num_position_dims:
                fail(name, value, f"{self.num_position_dims} entries for a {self.kind} modality")
        if self.kind == "video":
            t, (h, w) = self.num_frames, self.image_size
            if t % self.temporal_patch or h % self.spatial_patch or w % self.spatial_patch:
                fail("num_frames/image_size", (t, h, w), f"(frames, height, width) divisible by the patch "
                      f"({self.temporal_patch}, {self.spatial_patch}, {self.spatial_patch})")
        if self.kind == "audio" and self.num_samples % self.samples_per_patch:
            fail("num_samples", self.num_samples, f"a multiple of samples_per_patch={self.samples_per_patch}")

    @property
    def num_position_dims(self) -> int:
        return {"video": 3, "audio": 1, "label": 0}[self.kind]

    @property
    def patch_grid(self) -> tuple[int, ...]:
        """Token grid of the configured input: video ``(T/dt, H/dh, W/dw)``, audio ``(S/spp,)``, label ``(1,)``."""
        if self.kind == "video":
            s = self.spatial_patch
            return (self.num_frames // self.temporal_patch, self.image_size[0] // s, self.image_size[1] // s)
        if self.kind == "audio":
            return (self.num_samples // self.samples_per_patch,)
        return (1,)

    @property
    def output_grid(self) -> tuple[int, ...]:
        """Decoder query grid: video pixels ``(T, H, W)``, audio patches ``(S/spp,)``, label ``(1,)``."""
        if self.kind == "video":
            return (self.num_frames, *self.image_size)
        return self.patch_grid

    @property
    def input_max_resolution(self) -> tuple[int, ...]:
        if self.max_resolution is not None:
            return self.max_resolution
        return (self.num_samples,) if self.kind == "audio" else self.patch_grid

    @property
    def output_max_resolution(self) -> tuple[int, ...]:
        return self.query_max_resolution if self.query_max_resolution is not None else self.input_max_resolution

    @property
    def feature_channels(self) -> int:
        """Channels of one token before positions: video ``dt*dh*dw*C``, audio ``spp``, label ``K``."""
        if self.kind == "video":
            return self.temporal_patch * self.spatial_patch**2 * self.in_channels
        return self.samples_per_patch if self.kind == "audio" else self.num_classes

    @property
    def input_channels(self) -> int:
        """Channels of one token with positions."""
        if self.kind == "label":
            return self.num_classes
        pos = fourier_output_size(self.num_position_dims, self.num_bands, concat_pos=self.concat_pos,
                                  sine_only=self.sine_only)
        return self.feature_channels + pos

    @property
    def query_width(self) -> int:
        """Channels of one decoder query before the common padding."""
        if self.kind == "label":
            return self.query_channels
        return fourier_output_size(self.num_position_dims, self.query_num_bands or self.num_bands,
                                   concat_pos=self.concat_pos, sine_only=self.sine_only)

    @property
    def output_channels(self) -> int:
        """Channels of the output layer: video ``C``, audio ``spp``, label ``K``."""
        return self.in_channels if self.kind == "video" else self.feature_channels

    @property
    def num_queries(self) -> int:
        return math.prod(self.output_grid)


def _check_modalities(obj: Any) -> None:
    """Normalise ``modalities`` to ``{name: ModalityConfig}`` (``config.json`` gives dicts) and validate it."""
    mods = obj.modalities
    if not isinstance(mods, dict) or not mods:
        raise TypeError(f"modalities must be a non-empty dict name -> ModalityConfig, got {mods!r}")
    for name in mods:
        if not isinstance(name, str) or not name.isidentifier():
            fail("modalities", name, "modality names that are Python identifiers (they name parameters)")
        if name in _RESERVED:
            fail("modalities", name, "a name that is not an attribute of torch's ModuleDict/ParameterDict")
    out = {}
    for name in sorted(mods):  # the official order: sorted modality names
        spec = mods[name]
        if isinstance(spec, dict):
            spec = ModalityConfig.from_dict(spec)
        if not isinstance(spec, ModalityConfig):
            raise TypeError(f"modality {name!r} must be a ModalityConfig or a dict, got {type(spec).__name__}")
        out[name] = spec
    object.__setattr__(obj, "modalities", out)


def _check_heads(enc: EncoderConfig, input_channels: int, dec: Any) -> None:
    """Attention widths divisible by their head counts (encoder cross-attention, decoder)."""
    qk, v = enc.cross_attention_channels(input_channels)
    heads = enc.num_cross_attend_heads
    check_divisible("encoder cross-attention qk_channels", qk, "num_cross_attend_heads", heads)
    check_divisible("encoder cross-attention v_channels", v, "num_cross_attend_heads", heads)
    dqk = dec.qk_channels or enc.num_latent_channels
    check_divisible("decoder qk_channels", dqk, "decoder num_heads", dec.num_heads)
    check_divisible("decoder v_channels", dec.v_channels or dqk, "decoder num_heads", dec.num_heads)


@dataclass(frozen=True, kw_only=True)
class MultimodalDecoderConfig(ConfigBase):
    """The shared decoder: per-modality queries padded to ``max(query widths) + min_padding_size`` with a
    learned vector per modality, one cross-attention to the latents (``qk_channels=None``: the latent width),
    then ``Linear(-> num_output_channels)``; each modality's output layer follows."""

    min_padding_size: int = 2
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    num_output_channels: int = 512
    query_init_scale: float = 0.02

    def __post_init__(self) -> None:
        for name in ("num_heads", "widening_factor", "num_output_channels"):
            check_int(name, getattr(self, name))
        check_int("min_padding_size", self.min_padding_size, minimum=0)
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        check_bools(self, "use_query_residual")


@dataclass(frozen=True, kw_only=True)
class PerceiverIOMultimodalConfig(ConfigBase):
    """Multimodal autoencoder: modalities, input padding width, encoder, shared decoder, activation.

    ``min_padding_size``: every input token is padded with a learned per-modality vector to the common
    width ``max(input channels) + min_padding_size`` (official default 2; the released model uses 4).
    """

    _nested: ClassVar[dict[str, type]] = {"encoder": EncoderConfig, "decoder": MultimodalDecoderConfig}

    modalities: dict[str, ModalityConfig]
    min_padding_size: int = 2
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: MultimodalDecoderConfig = field(default_factory=MultimodalDecoderConfig)
    activation: str = "gelu_tanh"
    padding_init_scale: float = 0.02

    def __post_init__(self) -> None:
        _check_modalities(self)
        self._coerce_nested()
        check_int("min_padding_size", self.min_padding_size, minimum=0)
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.encoder.layout != "io":
            fail("encoder.layout", self.encoder.layout, "'io' for a multimodal model")
        _check_heads(self.encoder, self.input_width, self.decoder)

    @property
    def input_width(self) -> int:
        """Common token width after padding (704 for the released model)."""
        return max(m.input_channels for m in self.modalities.values()) + self.min_padding_size

    @property
    def query_width(self) -> int:
        """Common decoder query width after padding (1026 for the released model)."""
        return max(m.query_width for m in self.modalities.values()) + self.decoder.min_padding_size


@dataclass(frozen=True, kw_only=True)
class PerceiverIOAudioConfig(ConfigBase):
    """Raw-waveform classifier: an ``audio`` modality (patches + Fourier features), encoder, classification
    decoder (one learned query, ``Linear`` to ``num_outputs`` classes)."""

    _nested: ClassVar[dict[str, type]] = {
        "preprocessor": ModalityConfig, "encoder": EncoderConfig, "decoder": DecoderConfig,
    }

    preprocessor: ModalityConfig = field(default_factory=lambda: ModalityConfig(kind="audio"))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        self._coerce_nested()
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.preprocessor.kind != "audio":
            fail("preprocessor.kind", self.preprocessor.kind, "'audio'")
        if self.preprocessor.mask_prob is not None:
            fail("preprocessor.mask_prob", self.preprocessor.mask_prob, "None (mask tokens are multimodal only)")
        if self.decoder.type != "classification":
            fail("decoder.type", self.decoder.type, "'classification'")
        _check_heads(self.encoder, self.preprocessor.input_channels, self.decoder)
