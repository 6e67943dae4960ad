"""Optical-flow data: synthetic motion on real images for training, the real Middlebury 2014 motorcycle stereo pair
for evaluation, a classical baseline and the flow colour code. Needs scikit-image (``pip install
'perceivers[flow]'``; OpenCV is optional: it gives the Farneback baseline).

Training pairs (:class:`WarpedPairs`): a random crop of a scikit-image photograph (never the motorcycle), shrunk by
a random factor, and a smooth random displacement field ``F`` (a global translation plus a bicubically upsampled
coarse random grid). ``frame1(x) = photo(x + F(x))`` (bilinear) and ``frame2 = photo``, so the flow from frame 1 to
frame 2 is exactly ``F``: ground truth by construction. Item ``i`` is drawn from a generator seeded with
``(seed, i)``: deterministic.

Flow is ``(H, W, 2)`` in pixels, channel 0 horizontal (+ right), channel 1 vertical (+ down); frames are
``(2, 3, H, W)`` in [-1, 1].

Middlebury (:func:`middlebury_pair`): ``skimage.data.stereo_motorcycle()`` gives the left and right views and the
left view's disparity (``inf`` where unknown). A left pixel at ``x`` is at ``x - d`` in the right view, so the flow
from left to right is ``(-d, 0)``. Images are resized with antialiasing; the disparity is averaged over the known
pixels of each output cell and scaled by the width ratio; a cell is valid when at least 90 % of its pixels are known.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from perceivers.core.errors import UserError
from perceivers.core.validation import check_finite

#: scikit-image photographs that training pairs are cut from (the motorcycle pair is never among them).
TRAIN_IMAGES = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "coins")
#: The photograph of the held-out synthetic pairs.
HELD_OUT_IMAGES = ("coffee",)
INSTALL_HINT = "pip install 'perceivers[flow]' (or pip install scikit-image)"
MARGIN = 8  # pixels around a crop that displaced samples may reach


def _skimage_data():  # -> the skimage.data module
    try:
        import skimage.data
    except ImportError:  # a missing optional dependency is the user's to install: one line on the command line
        raise UserError(f"the flow recipe needs scikit-image: {INSTALL_HINT}") from None
    return skimage.data


def photographs(names: tuple[str, ...]) -> list[Tensor]:
    """The named ``skimage.data`` images as ``(3, H, W)`` float32 in [0, 1] (grey images repeated)."""
    data, out = _skimage_data(), []
    for name in names:
        array = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
        array = np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3]
        check_finite(f"skimage.data.{name}()", array)
        out.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1))
    return out


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, *size)``, bilinear with antialiasing."""
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def smooth_field(size: tuple[int, int], max_shift: float, generator: torch.Generator) -> Tensor:
    """A random displacement ``(H, W, 2)``: a translation uniform in ±``max_shift`` per axis plus a 3x4 grid
    uniform in ±``max_shift / 3``, upsampled bicubically."""
    translation = (torch.rand(2, generator=generator) * 2 - 1) * max_shift
    coarse = (torch.rand(1, 2, 3, 4, generator=generator) * 2 - 1) * (max_shift / 3)
    local = F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)[0]  # (2, H, W)
    return (local + translation[:, None, None]).permute(1, 2, 0)


def warp(image: Tensor, flow: Tensor, margin: int) -> Tensor:
    """``image (C, H + 2m, W + 2m)`` sampled at ``x + m + flow(x)`` for the ``(H, W)`` grid (bilinear)."""
    h, w = flow.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    x = xs + margin + flow[..., 0]
    y = ys + margin + flow[..., 1]
    big_h, big_w = image.shape[1:]
    grid = torch.stack([x / (big_w - 1) * 2 - 1, y / (big_h - 1) * 2 - 1], dim=-1)[None]  # (1, H, W, 2)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def warped_pair(photo: Tensor, size: tuple[int, int], max_shift: float,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One pair: frames ``(2, 3, H, W)`` in [-1, 1] and their flow ``(H, W, 2)`` (see the module doc)."""
    h, w = size
    margin = max(MARGIN, math.ceil(max_shift * 4 / 3) + 1)
    big = (h + 2 * margin, w + 2 * margin)
    largest = min(photo.shape[1] / big[0], photo.shape[2] / big[1])
    scale = float(torch.empty(1).uniform_(min(2.0, largest), min(12.0, largest), generator=generator))
    ch, cw = round(big[0] * scale), round(big[1] * scale)
    top = int(torch.randint(photo.shape[1] - ch + 1, (1,), generator=generator))
    left = int(torch.randint(photo.shape[2] - cw + 1, (1,), generator=generator))
    crop = resize(photo[None, :, top:top + ch, left:left + cw], big)[0].clamp(0, 1)
    flow = smooth_field(size, max_shift, generator)
    frame1 = warp(crop, flow, margin)
    frame2 = crop[:, margin:margin + h, margin:margin + w]
    return torch.stack([frame1, frame2]) * 2 - 1, flow


class WarpedPairs(Dataset):
    """``num_pairs`` deterministic training pairs ``(frames (2, 3, H, W), flow (H, W, 2))`` of ``photos``."""

    def __init__(self, photos: list[Tensor], *, size: tuple[int, int], num_pairs: int, max_shift: float,
                 seed: int) -> None:
        self.photos, self.size, self.num_pairs, self.max_shift, self.seed = photos, size, num_pairs, max_shift, seed

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        photo = self.photos[int(torch.randint(len(self.photos), (1,), generator=generator))]
        return warped_pair(photo, self.size, self.max_shift, generator)


def middlebury_pair(size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The real motorcycle pair at ``size``: frames ``(2, 3, H, W)`` in [-1, 1], flow ``(H, W, 2)`` (``-d, 0``;
    0 where unknown) and the valid mask ``(H, W)`` bool (see the module doc)."""
    left, right, disparity = _skimage_data().stereo_motorcycle()
    check_finite("skimage.data.stereo_motorcycle() left", left)
    check_finite("skimage.data.stereo_motorcycle() right", right)
    frames = torch.from_numpy(np.stack([left, right]).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    frames = resize(frames, size).clamp(0, 1) * 2 - 1
    disp = torch.from_numpy(np.asarray(disparity, dtype=np.float32))
    known = torch.isfinite(disp)
    known_share = F.adaptive_avg_pool2d(known[None].float(), size)[0]  # (H, W)
    disp_sum = F.adaptive_avg_pool2d(torch.where(known, disp, 0.0)[None], size)[0]
    mean_disp = disp_sum / known_share.clamp(min=1e-6) * (size[1] / disp.shape[1])
    valid = known_share >= 0.9
    flow = torch.stack([torch.where(valid, -mean_disp, 0.0), torch.zeros(size)], dim=-1)
    return frames, flow, valid


def end_point_error(flow: Tensor, target: Tensor, valid: Tensor | None = None) -> float:
    """Mean Euclidean distance between ``flow`` and ``target`` ``(..., H, W, 2)`` over the ``valid`` pixels."""
    error = (flow - target).norm(dim=-1)
    return float(error[valid].mean() if valid is not None else error.mean())


def block_matching(frames: Tensor, *, radius: int = 5, patch: int = 5) -> Tensor:
    """Classical baseline without OpenCV: for every pixel of frame 1, the integer displacement within ±``radius``
    whose ``patch x patch`` sum of squared differences to frame 2 (edge-padded) is smallest. ``frames (2, 3, H,
    W)`` -> flow ``(H, W, 2)``."""
    a, b = frames[0], frames[1]
    h, w = a.shape[1:]
    pad = radius + patch // 2
    b_big = F.pad(b[None], (pad, pad, pad, pad), mode="replicate")[0]
    best = torch.full((h, w), math.inf)
    flow = torch.zeros(h, w, 2)
    kernel = torch.ones(1, 1, patch, patch)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = b_big[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
            ssd = ((a - shifted) ** 2).sum(0)[None, None]
            cost = F.conv2d(F.pad(ssd, (patch // 2,) * 4, mode="replicate"), kernel)[0, 0]
            better = cost < best
            best = torch.where(better, cost, best)
            flow[better] = torch.tensor([float(dx), float(dy)])
    return flow


def farneback(frames: Tensor) -> Tensor | None:
    """OpenCV's Farneback flow of ``frames (2, 3, H, W)`` in [-1, 1] -> ``(H, W, 2)``; ``None`` without OpenCV."""
    try:
        import cv2
    except ImportError:
        return None
    grey = ((frames.mean(1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    flow = cv2.calcOpticalFlowFarneback(grey[0], grey[1], None, 0.5, 3, 9, 5, 5, 1.1, 0)
    return torch.from_numpy(flow)


def flow_to_rgb(flow: Tensor, max_magnitude: float, valid: Tensor | None = None) -> np.ndarray:
    """The usual flow colour code: hue = direction, saturation = magnitude / ``max_magnitude`` (white = still);
    ``(H, W, 2)`` -> ``(H, W, 3)`` uint8; invalid pixels black."""
    u, v = flow[..., 0].numpy(), flow[..., 1].numpy()
    hue = (np.arctan2(-v, -u) / np.pi + 1) / 2 * 6  # [0, 6)
    sat = np.clip(np.hypot(u, v) / max(max_magnitude, 1e-6), 0, 1)
    i = np.floor(hue).astype(int) % 6
    f = hue - np.floor(hue)
    p, q, t = 1 - sat, 1 - sat * f, 1 - sat * (1 - f)
    one = np.ones_like(sat)
    table = [(one, t, p), (q, one, p), (p, one, t), (p, q, one), (t, p, one), (one, p, q)]
    rgb = np.zeros(sat.shape + (3,), np.float32)
    for k, channels in enumerate(table):
        rgb[i == k] = np.stack(channels, -1)[i == k]
    if valid is not None:
        rgb[~valid.numpy()] = 0
    return (rgb * 255).round().astype(np.uint8)
