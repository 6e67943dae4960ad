"""Real images as HiP token sequences ``(N, H*W, C)`` and a dependency-free PNG writer.

- :func:`images_to_tokens` / :func:`tokens_to_images`: NCHW <-> row-major pixel tokens.
- :func:`natural_crops`: random crops of the natural photographs shipped with scikit-image
  (``skimage.data``; no download). Training and held-out crops come from disjoint photographs.
- :func:`write_png`: an 8-bit RGB PNG (zlib, no imaging library), written atomically.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from perceivers.core.errors import UserError
from perceivers.core.files import atomic_write
from perceivers.core.validation import check_finite

# RGB photographs bundled with scikit-image (no download); the last one is held out for evaluation.
NATURAL_TRAIN_IMAGES = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
NATURAL_HELD_OUT_IMAGES = ("coffee",)


def images_to_tokens(images: Tensor) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, H*W, C)`` (row-major positions)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    return images.permute(0, 2, 3, 1).reshape(n, h * w, c)


def tokens_to_images(tokens: Tensor, height: int, width: int) -> Tensor:
    """``(N, H*W, C)`` -> ``(N, C, H, W)``."""
    if tokens.dim() != 3 or tokens.shape[1] != height * width:
        raise ValueError(f"tokens must be (N, {height * width}, C) for {height}x{width} images, got "
                         f"{tuple(tokens.shape)}")
    n, _, c = tokens.shape
    return tokens.reshape(n, height, width, c).permute(0, 3, 1, 2)


def natural_crops(num_crops: int, size: int, *, held_out: bool = False, seed: int = 0) -> Tensor:
    """``(num_crops, 3, size, size)`` float32 crops in [0, 1] of scikit-image's RGB photographs, drawn
    uniformly over images then positions with a seeded generator (deterministic). ``held_out=True``
    crops the evaluation photographs (:data:`NATURAL_HELD_OUT_IMAGES`) instead of the training ones."""
    try:
        import skimage.data
    except ImportError:  # a missing optional dependency is the user's to install: one line on the command line
        raise UserError("natural images (data='natural') need scikit-image: pip install 'perceivers[images]'") from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size={size!r} is invalid: expected an int >= 2")
    names = NATURAL_HELD_OUT_IMAGES if held_out else NATURAL_TRAIN_IMAGES
    photos = [np.asarray(getattr(skimage.data, name)(), dtype=np.float32)[..., :3] / 255.0 for name in names]
    for name, photo in zip(names, photos):
        check_finite(f"skimage.data.{name}()", photo)
        if photo.shape[0] < size or photo.shape[1] < size:
            raise ValueError(f"size={size} is larger than skimage.data.{name} {photo.shape[:2]}")
    rng = np.random.default_rng(seed)
    crops = np.empty((num_crops, size, size, 3), dtype=np.float32)
    for i in range(num_crops):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - size + 1)
        left = rng.integers(photo.shape[1] - size + 1)
        crops[i] = photo[top:top + size, left:left + size]
    return torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()


def _png_bytes(rgb: np.ndarray) -> bytes:
    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write ``rgb: (H, W, 3) uint8`` as a PNG file (atomically)."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be a (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    data = _png_bytes(rgb)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
