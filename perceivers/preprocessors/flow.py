"""Optical-flow input processing (official ``io_processors.patches_for_flow`` + ``ImagePreprocessor``) and its config.

Frame pairs are ``(B, T, C, H, W)`` floats (T = 2 frames, C = 3, channels before the spatial axes as
in our NCHW image models) in [-1, 1]; :func:`frames_from_images` builds them from two ``H x W x 3``
uint8 images with the official normalisation ``x / 255 * 2 - 1``. Also here: the tile grid and the
blending weights of tiled inference on images larger than the training size (official colab).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_int,
    fail,
    normalize_int_tuple,
)
from perceivers.preprocessors.image import ImagePreprocessor, ImagePreprocessorConfig

#: The official training resolution (``TRAIN_SIZE`` of the colab), also the tile size of tiled inference.
FLOW_TRAIN_SIZE = (368, 496)


@dataclass(frozen=True, kw_only=True)
class FlowPreprocessorConfig(ConfigBase):
    """Frame pairs ``(B, num_frames, in_channels, H, W)`` with ``(H, W) == image_size`` -> tokens.

    ``patch_size`` (odd): the ``patch_size x patch_size`` neighbourhood of every pixel, zero-padded by
    ``patch_size // 2`` (official: 3, pad 1), channel order (patch-row, patch-col, channel).
    ``num_channels``: width of ``patches_linear`` (official 64). Fourier features use ``max_resolution``
    (default ``image_size``; official (368, 496)).
    """

    type: ClassVar[str] = "flow"  # the tag that names this preprocessor in a model config

    image_size: tuple[int, int] = FLOW_TRAIN_SIZE
    in_channels: int = 3
    num_frames: int = 2
    patch_size: int = 3
    num_channels: int = 64
    num_bands: int = 64
    max_resolution: tuple[int, int] | None = None
    concat_pos: bool = True
    sine_only: bool = False

    def __post_init__(self) -> None:
        normalize_int_tuple(self, "image_size", self.image_size)
        if len(self.image_size) != 2:
            fail("image_size", self.image_size, "(height, width)")
        for name in ("in_channels", "num_frames", "patch_size", "num_channels", "num_bands"):
            check_int(name, getattr(self, name))
        if self.patch_size % 2 == 0:
            fail("patch_size", self.patch_size, "an odd int (the patch is centred on its pixel)")
        normalize_int_tuple(self, "max_resolution", self.max_resolution, allow_none=True)
        if self.max_resolution is not None and len(self.max_resolution) != 2:
            fail("max_resolution", self.max_resolution, "two entries (height, width) or None")
        check_bools(self, "concat_pos", "sine_only")

    @property
    def patch_channels(self) -> int:
        """Values per pixel and frame: ``patch_size**2 * in_channels`` (27 officially)."""
        return self.patch_size**2 * self.in_channels

    def image_config(self) -> ImagePreprocessorConfig:
        """The image preprocessor applied to the concatenated patches ``(B, num_frames*patch_channels, H, W)``:
        ``patches`` with block 1 (a per-pixel ``Linear``), Fourier positions concatenated."""
        return ImagePreprocessorConfig(
            image_size=self.image_size, in_channels=self.num_frames * self.patch_channels, prep_type="patches",
            spatial_downsample=1, num_channels=self.num_channels, conv_after_patching=True,
            position_encoding="fourier", num_bands=self.num_bands,
            max_resolution=self.max_resolution or self.image_size, concat_pos=self.concat_pos,
            sine_only=self.sine_only,
        )

    @property
    def output_channels(self) -> int:
        """Channels of the tokens (and of the decoder queries): 322 officially."""
        return self.image_config().output_channels

    @property
    def token_channels(self) -> int:
        """Channels of the tokens fed to the encoder (= :attr:`output_channels`)."""
        return self.output_channels

    def debug_size(self) -> FlowPreprocessorConfig:
        """The same input at test size: 8x8 frames, at most 8 channels and 4 Fourier bands."""
        return self.replace(image_size=(8, 8), num_channels=min(self.num_channels, 8),
                            num_bands=min(self.num_bands, 4), max_resolution=None if self.max_resolution is None
                            else (8, 8))


def extract_flow_patches(frames: Tensor, patch_size: int = 3) -> Tensor:
    """``frames: (B, T, C, H, W)`` -> ``(B, T, patch_size**2 * C, H, W)``: the ``patch_size x patch_size``
    neighbourhood of every pixel, zero-padded by ``patch_size // 2`` at the borders, channel order
    (patch-row, patch-col, channel) like TF ``extract_patches`` in the official ``patches_for_flow``.

    This is also the input layout of HF transformers' ``PerceiverForOpticalFlow`` ``(B, 2, 27, H, W)``.
    """
    if not isinstance(frames, Tensor) or frames.dim() != 5:
        raise ValueError(f"frames must be a (B, T, C, H, W) tensor, got "
                         f"{tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size={patch_size!r} is invalid: expected an odd int >= 1")
    b, t, c, h, w = frames.shape
    r = patch_size // 2
    padded = F.pad(frames.reshape(b * t, c, h, w), (r, r, r, r))  # (B*T, C, H+2r, W+2r), zeros
    shifted = [padded[:, :, i:i + h, j:j + w] for i in range(patch_size) for j in range(patch_size)]
    patches = torch.stack(shifted, dim=1)  # (B*T, P*P, C, H, W): (row, col) slowest, channel fastest
    return patches.reshape(b, t, patch_size * patch_size * c, h, w)


def frames_from_images(*images: np.ndarray | Tensor) -> Tensor:
    """Uint8 ``H x W x C`` images (numpy or torch) -> one frame stack ``(1, T, C, H, W)`` float32 in [-1, 1]
    (official normalisation ``x / 255 * 2 - 1``)."""
    if len(images) < 2:
        raise ValueError(f"frames_from_images needs at least two images, got {len(images)}")
    out = []
    for i, image in enumerate(images):
        x = torch.as_tensor(np.asarray(image)) if not isinstance(image, Tensor) else image
        if x.dtype != torch.uint8 or x.dim() != 3:
            raise ValueError(f"image {i} must be a uint8 H x W x C array, got dtype {x.dtype} and shape {tuple(x.shape)}")
        x = x.permute(2, 0, 1)  # (C, H, W)
        if out and x.shape != out[0].shape:
            raise ValueError(f"image {i} is {tuple(x.shape[1:])} x {x.shape[0]}, unlike image 0 "
                             f"({tuple(out[0].shape[1:])} x {out[0].shape[0]})")
        out.append(x)
    return (torch.stack(out).unsqueeze(0).float() / 255.0) * 2.0 - 1.0


class FlowPreprocessor(nn.Module):
    """Patches ``(B, T, P*P*C, H, W)`` -> tokens ``(B, H*W, C_out)``: the frames' values concatenated per
    pixel (frame 1 then frame 2: 54 channels officially), ``patches_linear`` (54 -> 64) and 2-D Fourier
    features concatenated (322 channels). Returns ``(tokens, features_without_pos, grid)``.
    """

    def __init__(self, config: FlowPreprocessorConfig) -> None:
        super().__init__()
        self.config = config
        self.image = ImagePreprocessor(config.image_config())

    def init_weights(self) -> None:
        self.image.init_weights()

    @property
    def patches_linear(self) -> nn.Linear:
        assert self.image.patches_linear is not None
        return self.image.patches_linear

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        b, t, k, h, w = patches.shape
        return self.image(patches.reshape(b, t * k, h, w))  # (B, T*K, H, W): frame-major channels


def tile_starts(size: int, tile: int, min_overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` (official colab grid).

    The colab steps by ``tile - min_overlap`` and moves the last tile flush with the border. Here steps
    that would run past the border are dropped first (the colab then cuts a tile short and fails, e.g.
    for size 700 with 368-long tiles) and duplicates are removed (size == tile); wherever the colab's
    grid is valid the two agree. Consecutive tiles overlap by at least ``min_overlap``.
    """
    if size < tile:
        raise ValueError(f"image size {size} is smaller than the tile size {tile}; tiles must fit in the image")
    if not 0 <= min_overlap < tile:
        raise ValueError(f"min_overlap={min_overlap!r} is invalid: expected an int in [0, {tile})")
    starts = [s for s in range(0, size, tile - min_overlap) if s + tile <= size]
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def tile_weights(tile_size: Sequence[int], *, device=None, dtype=torch.float32) -> Tensor:
    """Blending weights ``(th, tw)`` of one tile: the 1-based distance to the nearest tile edge (official)."""
    th, tw = tile_size
    wy = torch.minimum(torch.arange(th, device=device) + 1, th - torch.arange(th, device=device))
    wx = torch.minimum(torch.arange(tw, device=device) + 1, tw - torch.arange(tw, device=device))
    return torch.minimum(wy[:, None], wx[None, :]).to(dtype)
