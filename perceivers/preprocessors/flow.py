"""Optical-flow input processing (official ``io_processors.patches_for_flow`` + ``ImagePreprocessor``).

Frame pairs are ``(B, T, C, H, W)`` floats (T = 2 frames, C = 3, channels before the spatial axes as
in our NCHW image models) in [-1, 1]; :func:`frames_from_images` builds them from two ``H x W x 3``
uint8 images with the official normalisation ``x / 255 * 2 - 1``. Also here: the tile grid and the
blending weights of tiled inference on images larger than the training size (official colab).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.models.perceiver_io.flow_config import FlowPreprocessorConfig
from perceivers.preprocessors.image import ImagePreprocessor


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
