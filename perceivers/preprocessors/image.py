"""Image preprocessor (official ``io_processors.ImagePreprocessor``) for NCHW float images.

Returns ``(tokens (B, M, C), features_without_pos (B, M, C_feat), grid (H', W'))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.layers.init import init_linear_haiku
from perceivers.layers.position import PositionEncoder
from perceivers.models.perceiver_io.config import ImagePreprocessorConfig, prep_grid


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) along one axis: output ``ceil(size/stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def space_to_depth(x: Tensor, block: int) -> Tensor:
    """``(B, H*b, W*b, C)`` -> ``(B, H, W, b*b*C)`` with channel order (dh, dw, c), as the official code."""
    b, h, w, c = x.shape
    x = x.view(b, h // block, block, w // block, block, c)  # (B, H, dh, W, dw, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H, W, dh, dw, C)
    return x.reshape(b, h // block, w // block, block * block * c)


class Conv2DDownsample(nn.Module):
    """``num_layers`` x [7x7/2 conv (TF-SAME, no bias), BatchNorm, ReLU, 3x3/2 max-pool (SAME)].

    224x224 gives 56x56 = 3,136 tokens. ``padding='hf'`` reproduces HF transformers instead (conv padded
    (3, 3) on both sides, pool unpadded: 55x55 = 3,025 tokens; see the README's table of HF differences).
    ``(B, C, H, W) -> (B, C', ceil(H/4^L), ceil(W/4^L))``.
    """

    def __init__(self, *, in_channels: int, num_channels: int, num_layers: int, use_batchnorm: bool = True,
                 padding: str = "tf_same") -> None:
        super().__init__()
        if padding not in ("tf_same", "hf"):
            raise ValueError(f"padding must be 'tf_same' or 'hf', got {padding!r}")
        self.padding = padding
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else num_channels, num_channels, 7, stride=2, bias=False)
            for i in range(num_layers)
        )
        self.batchnorms = nn.ModuleList(
            nn.BatchNorm2d(num_channels, eps=1e-5, momentum=0.1) if use_batchnorm else nn.Identity()
            for _ in range(num_layers)
        )

    def init_weights(self) -> None:
        for conv in self.convs:
            init_linear_haiku(conv)
        for bn in self.batchnorms:
            if isinstance(bn, nn.BatchNorm2d) and not bn.weight.is_meta:
                bn.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        for conv, bn in zip(self.convs, self.batchnorms):
            if self.padding == "hf":  # HF transformers: conv padded (3, 3), max-pool unpadded
                x = torch.relu(bn(conv(F.pad(x, (3, 3, 3, 3)))))
                x = F.max_pool2d(x, 3, stride=2)
                continue
            ph, pw = tf_same_padding(x.shape[2], 7, 2), tf_same_padding(x.shape[3], 7, 2)
            x = torch.relu(bn(conv(F.pad(x, (*pw, *ph)))))
            ph, pw = tf_same_padding(x.shape[2], 3, 2), tf_same_padding(x.shape[3], 3, 2)
            x = F.max_pool2d(F.pad(x, (*pw, *ph), value=float("-inf")), 3, stride=2)
        return x


class ImagePreprocessor(nn.Module):
    """Prepares NCHW images ``(B, C, H, W)`` as tokens ``(B, H'*W', C_feat + C_pos)``.

    See :class:`~perceivers.models.perceiver_io.config.ImagePreprocessorConfig` for the four ``prep_type``s.
    Fourier positions accept any image size (the grid is re-normalised to [-1, 1]); trainable
    positions require ``config.image_size``.
    """

    def __init__(self, config: ImagePreprocessorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.conv: Conv2DDownsample | None = None
        self.conv1x1: nn.Conv2d | None = None
        self.patches_linear: nn.Linear | None = None
        if c.prep_type == "conv":
            self.conv = Conv2DDownsample(in_channels=c.in_channels, num_channels=c.num_channels,
                                         num_layers=round(math.log(c.spatial_downsample, 4)),
                                         use_batchnorm=c.conv2d_use_batchnorm, padding=c.conv_padding)
        elif c.prep_type == "conv1x1":
            self.conv1x1 = nn.Conv2d(c.in_channels, c.num_channels, 1, stride=c.spatial_downsample)
        elif c.prep_type == "patches" and c.conv_after_patching:
            self.patches_linear = nn.Linear(c.in_channels * c.spatial_downsample**2, c.num_channels)
        self.position = PositionEncoder(
            kind=c.position_encoding, index_dims=c.grid, input_channels=c.feature_channels, num_bands=c.num_bands,
            max_resolution=c.max_resolution, concat_pos=c.concat_pos, sine_only=c.sine_only,
            trainable_channels=c.trainable_pos_channels, init_scale=c.pos_init_scale,
            project_pos_dim=c.project_pos_dim, concat_or_add=c.concat_or_add_pos,
        )

    def init_weights(self) -> None:
        if self.conv is not None:
            self.conv.init_weights()
        for layer in (self.conv1x1, self.patches_linear):
            if layer is not None:
                init_linear_haiku(layer)
        self.position.init_weights()

    def check_input(self, images: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``images`` is a float ``(B, C, H, W)`` this config accepts."""
        c = self.config
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor (convert integer pixels, e.g. x.float() / 255), "
                            f"got dtype {images.dtype}")
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, C, H, W), got rank {images.dim()} {tuple(images.shape)}")
        b, ch, h, w = images.shape
        if b == 0 or h == 0 or w == 0:
            raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
        if ch != c.in_channels:
            raise ValueError(f"images have {ch} channels, expected in_channels={c.in_channels} (NCHW layout)")
        if (c.position_encoding == "trainable" or c.prep_type == "patches") and (h, w) != c.image_size:
            raise ValueError(f"images are {h}x{w}, expected image_size={c.image_size} for this config")

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return prep_grid(self.config, h, w)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """``images: (B, C, H, W)`` -> ``(tokens (B, M, C_out), features (B, M, C_feat), grid)``."""
        self.check_input(images)
        c = self.config
        s = c.spatial_downsample
        if self.conv is not None:
            x = self.conv(images)
        elif self.conv1x1 is not None:
            x = self.conv1x1(images)
        elif c.prep_type == "pixels":
            x = images[:, :, ::s, ::s]
        else:
            x = None
        if x is None:  # patches
            feats = space_to_depth(images.permute(0, 2, 3, 1), s)  # (B, H', W', s*s*C)
            if self.patches_linear is not None:
                feats = self.patches_linear(feats)
        else:
            feats = x.permute(0, 2, 3, 1)  # (B, H', W', C')
        grid = (feats.shape[1], feats.shape[2])
        feats = feats.reshape(feats.shape[0], grid[0] * grid[1], feats.shape[3])  # (B, M, C_feat)
        return self.position(feats, grid), feats, grid
