"""One modality of the multimodal Perceiver IO (and, alone, the raw-audio classifier's input): its config and
the module that reads it into tokens.

A modality is described once, by :class:`ModalityConfig`: its ``kind`` fixes how it is read, queried and
written back (official ``io_processors.py`` / ``perceiver.py``):

- ``video``: input ``(B, T, H, W, C)`` floats; space-to-depth patches ``(dt, dh, dw)`` with channel order
  ``(dt, dh, dw, c)``, 3-D Fourier features over the patch grid ``(T/dt, H/dh, W/dw)``; decoder queries are
  3-D Fourier features over the *pixel* grid ``(T, H, W)``; output ``Linear(-> C)`` per pixel.
- ``audio``: input ``(B, S)`` or ``(B, S, 1)`` samples; patches of ``samples_per_patch`` samples, 1-D Fourier
  features over the patch index; queries 1-D Fourier features over the patches; output
  ``Linear(-> samples_per_patch)`` flattened back to samples.
- ``label``: input ``(B, K)`` (one-hot or probabilities) as one token of ``K`` channels, no positions; the
  query is a learned ``(1, query_channels)`` table; output ``Linear(-> K)`` logits.

Modality names come from the configuration only (the model code knows no name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_int,
    check_optional_int,
    fail,
    normalize_int_tuple,
)
from perceivers.layers.position import FourierPositionEncoding, fourier_output_size

MODALITY_KINDS = ("video", "audio", "label")


def check_unit(name: str, value: Any) -> None:
    """A probability in [0, 1] (``bool`` refused)."""
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

    Alone, as a model's preprocessor (tag ``modality``), a modality is read without padding or mask token:
    the raw-audio classifier.
    """

    type: ClassVar[str] = "modality"  # the tag that names this preprocessor in a model config

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
            check_unit("mask_prob", self.mask_prob)
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

    @property
    def token_channels(self) -> int:
        """Channels of the tokens fed to the encoder when the modality is read alone (= :attr:`input_channels`)."""
        return self.input_channels

    def debug_size(self) -> ModalityConfig:
        """The same modality at test size: video 2x2x2 patches, audio 16 patches of at most 4 samples, label at most
        5 classes; at most 4 Fourier bands, 16 query channels; explicit max resolutions follow the smaller grid."""
        spp = min(self.samples_per_patch, 4)
        small = self.replace(num_frames=2 * self.temporal_patch, image_size=(2 * self.spatial_patch,) * 2,
                             num_samples=16 * spp, samples_per_patch=spp, num_classes=min(self.num_classes, 5),
                             num_bands=min(self.num_bands, 4), query_channels=min(self.query_channels, 16),
                             query_num_bands=None if self.query_num_bands is None else min(self.query_num_bands, 4),
                             max_resolution=None, query_max_resolution=None)
        return small.replace(
            max_resolution=None if self.max_resolution is None else small.input_max_resolution,
            query_max_resolution=None if self.query_max_resolution is None else small.input_max_resolution)


def video_space_to_depth(video: Tensor, temporal_patch: int, spatial_patch: int) -> Tensor:
    """``(B, T*dt, H*dh, W*dw, C)`` -> ``(B, T, H, W, dt*dh*dw*C)``, channel order (dt, dh, dw, c) (official)."""
    b, t, h, w, c = video.shape
    dt, s = temporal_patch, spatial_patch
    x = video.reshape(b, t // dt, dt, h // s, s, w // s, s, c)  # (B, T', dt, H', dh, W', dw, C)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T', H', W', dt, dh, dw, C)
    return x.reshape(b, t // dt, h // s, w // s, dt * s * s * c)


def check_float_tensor(x: object, name: str) -> None:
    """``TypeError`` naming ``name`` unless ``x`` is a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


class ModalityPreprocessor(nn.Module):
    """One modality -> ``(tokens (B, M, C_in), features without positions (B, M, C_feat))``; no parameters.

    video ``(B, T, H, W, C)``: patches + 3-D Fourier features over the patch grid; audio ``(B, S)`` or
    ``(B, S, 1)``: patches of ``samples_per_patch`` + 1-D Fourier features; label ``(B, K)``: one token.
    """

    def __init__(self, config: ModalityConfig) -> None:
        super().__init__()
        self.config = c = config
        self.position: FourierPositionEncoding | None = None
        if c.kind != "label":
            self.position = FourierPositionEncoding(c.patch_grid, num_bands=c.num_bands,
                                                    max_resolution=c.input_max_resolution, concat_pos=c.concat_pos,
                                                    sine_only=c.sine_only)

    def init_weights(self) -> None:
        """Nothing to initialise: a modality preprocessor has no parameters."""

    def check_input(self, x: Tensor, name: str) -> None:
        """``TypeError``/``ValueError`` naming ``name`` unless ``x`` is a valid input of this modality."""
        c = self.config
        check_float_tensor(x, name)
        if c.kind == "video":
            dt, s = c.temporal_patch, c.spatial_patch
            if x.dim() != 5 or x.shape[-1] != c.in_channels:
                raise ValueError(f"{name} must be a video (B, T, H, W, C={c.in_channels}), got {tuple(x.shape)}")
            if 0 in x.shape or x.shape[1] % dt or x.shape[2] % s or x.shape[3] % s:
                raise ValueError(f"{name} frames/height/width {tuple(x.shape[1:4])} must be non-zero multiples of "
                                 f"the patch ({dt}, {s}, {s})")
        elif c.kind == "audio":
            if not (x.dim() == 2 or (x.dim() == 3 and x.shape[-1] == 1)):
                raise ValueError(f"{name} must be a waveform (B, S) or (B, S, 1), got {tuple(x.shape)}")
            if 0 in x.shape or x.shape[1] % c.samples_per_patch:
                raise ValueError(f"{name} has {x.shape[1]} samples: expected a non-zero multiple of "
                                 f"samples_per_patch={c.samples_per_patch}")
        elif x.dim() != 2 or x.shape[1] != c.num_classes or x.shape[0] == 0:
            raise ValueError(f"{name} must be (B, num_classes={c.num_classes}), got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        if c.kind == "label":
            feats = x[:, None, :]  # (B, 1, K): one token, no positions
            return feats, feats
        if c.kind == "video":
            grid = video_space_to_depth(x, c.temporal_patch, c.spatial_patch)  # (B, T', H', W', C_feat)
            dims = tuple(grid.shape[1:4])
            feats = grid.reshape(x.shape[0], -1, grid.shape[-1])  # (B, T'*H'*W', C_feat)
        else:
            feats = x.reshape(x.shape[0], -1, c.samples_per_patch)  # (B, S/spp, spp)
            dims = (feats.shape[1],)
        pos = self.position(x.shape[0], index_dims=dims, device=x.device, dtype=x.dtype)
        return torch.cat([feats, pos], dim=-1), feats
