"""scikit-learn's ``load_digits``: 1,797 real 8x8 handwritten digits (0-16 grey levels), shipped with
scikit-learn, so no download is needed.

The split is fixed: ``train_test_split(test_size=0.2, stratify=labels, random_state=0)``, giving
1,437 training and 360 test images. Pixels are scaled to [0, 1] and returned NCHW ``(N, 1, 8, 8)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from perceivers.core.validation import check_finite

TEST_SIZE = 0.2
SPLIT_SEED = 0
NUM_CLASSES = 10


@dataclass(frozen=True)
class ImageSplit:
    """A fixed train/test split of labelled images: ``(N, C, H, W)`` float32 in [0, 1] and ``(N,)`` int64 labels
    (the digits: 1,437 / 360 of 1x8x8; MNIST: 4,000 / 1,000 of 1x28x28)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


DigitsSplit = ImageSplit


def stratified_split(images: np.ndarray, labels: np.ndarray, test_size: float | int, seed: int) -> ImageSplit:
    """scikit-learn's stratified, seeded ``train_test_split`` of ``images (N, C, H, W)`` and ``labels (N,)``."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_size, stratify=labels,
                                              random_state=seed)
    return ImageSplit(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te))


@lru_cache(maxsize=1)
def load_digits_split() -> DigitsSplit:
    """The fixed, stratified, seeded train/test split of the digits (see module docstring); read once per process
    (every call returns the same tensors: do not modify them in place)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    check_finite("digits images", images)  # positions in load_digits() order, before the split
    labels = data.target.astype(np.int64)
    return stratified_split(images, labels, TEST_SIZE, SPLIT_SEED)


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Augmentation: shift each image by up to ``max_shift`` pixels in x and y, zero-filled. ``(B, C, H, W)``."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, images.shape[1], h, padded.shape[3])
    shifted = padded.gather(2, rows)  # (B, C, H, W + 2s)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, images.shape[1], h, w)
    return shifted.gather(3, cols)

