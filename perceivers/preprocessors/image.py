"""Image preprocessor (official ``io_processors.ImagePreprocessor``) for NCHW float images, and its config.

Returns ``(tokens (B, M, C), features_without_pos (B, M, C_feat), grid (H', W'))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_int,
    check_scale,
    fail,
    normalize_int_tuple,
)
from perceivers.layers.init import init_linear_haiku
from perceivers.layers.position import PositionEncoder, fourier_output_size

PREP_TYPES = ("pixels", "patches", "conv1x1", "conv")
POSITION_TYPES = ("fourier", "trainable", "none")


@dataclass(frozen=True, kw_only=True)
class ImagePreprocessorConfig(ConfigBase):
    """Image preprocessor (official ``ImagePreprocessor``); images are NCHW floats.

    ``prep_type``: ``pixels`` (keep every ``spatial_downsample``-th pixel), ``patches`` (space to
    depth, channel order (dh, dw, c), optional ``Linear`` to ``num_channels``), ``conv1x1``
    (``Conv2d(1x1, stride=spatial_downsample)``), ``conv`` (log4(spatial_downsample) x [7x7/2 conv
    TF-SAME, BatchNorm, ReLU, 3x3/2 max-pool SAME]). Positions are built over the post-prep grid.

    ``conv_padding`` (``prep_type='conv'`` only): ``'tf_same'`` (official, default: conv padded (2, 3) and
    max-pool SAME at 224, 224 -> 56x56 = 3,136 tokens) or ``'hf'``, an HF-compatibility switch that
    reproduces HF transformers' deviation (conv padded (3, 3) on both sides, max-pool 3x3/2 unpadded:
    224 -> 55x55 = 3,025 tokens). Used by ``Conv2DDownsample`` and :func:`prep_grid` alike.
    """

    type: ClassVar[str] = "image"  # the tag that names this preprocessor in a model config

    image_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    prep_type: str = "conv"
    spatial_downsample: int = 4
    num_channels: int = 64
    conv_after_patching: bool = False
    conv2d_use_batchnorm: bool = True
    position_encoding: str = "fourier"
    num_bands: int = 64
    max_resolution: tuple[int, ...] | None = None
    concat_pos: bool = True
    sine_only: bool = False
    trainable_pos_channels: int = 256
    pos_init_scale: float = 0.02
    project_pos_dim: int = 0
    concat_or_add_pos: str = "concat"
    conv_padding: str = "tf_same"

    def __post_init__(self) -> None:
        normalize_int_tuple(self, "image_size", self.image_size)
        if len(self.image_size) != 2:
            fail("image_size", self.image_size, "(height, width)")
        check_int("in_channels", self.in_channels)
        check_choice("prep_type", self.prep_type, PREP_TYPES)
        check_int("spatial_downsample", self.spatial_downsample)
        check_int("num_channels", self.num_channels)
        check_choice("position_encoding", self.position_encoding, POSITION_TYPES)
        check_int("num_bands", self.num_bands)
        normalize_int_tuple(self, "max_resolution", self.max_resolution, allow_none=True)
        if self.max_resolution is not None and len(self.max_resolution) != 2:
            fail("max_resolution", self.max_resolution, "two entries (height, width) or None")
        check_int("trainable_pos_channels", self.trainable_pos_channels)
        check_int("project_pos_dim", self.project_pos_dim, minimum=0)
        check_choice("concat_or_add_pos", self.concat_or_add_pos, ("concat", "add"))
        check_choice("conv_padding", self.conv_padding, CONV_PADDINGS)
        check_scale("pos_init_scale", self.pos_init_scale)
        check_bools(self, "conv_after_patching", "conv2d_use_batchnorm", "concat_pos", "sine_only")
        if self.prep_type == "conv":
            layers = math.log(self.spatial_downsample, 4)
            if self.spatial_downsample < 4 or abs(layers - round(layers)) > 1e-9:
                fail("spatial_downsample", self.spatial_downsample, "a power of 4 (>= 4) for prep_type='conv'")
        h, w = self.image_size
        if self.prep_type == "patches" and (h % self.spatial_downsample or w % self.spatial_downsample):
            fail("image_size", self.image_size, f"divisible by spatial_downsample={self.spatial_downsample} for patches")
        if self.concat_or_add_pos == "add" and self.position_encoding != "none":
            if self.pos_channels != self.feature_channels:
                fail("concat_or_add_pos", "add", f"position channels ({self.pos_channels}) equal to feature "
                      f"channels ({self.feature_channels})")

    @property
    def grid(self) -> tuple[int, int]:
        """Post-prep grid ``(H', W')`` for ``image_size``."""
        return prep_grid(self, *self.image_size)

    @property
    def feature_channels(self) -> int:
        """Channels of the prepared features before positions are added."""
        if self.prep_type == "pixels":
            return self.in_channels
        if self.prep_type == "patches":
            return self.num_channels if self.conv_after_patching else self.in_channels * self.spatial_downsample**2
        return self.num_channels

    @property
    def pos_channels(self) -> int:
        if self.position_encoding == "none":
            return 0
        if self.project_pos_dim > 0:
            return self.project_pos_dim
        if self.position_encoding == "trainable":
            return self.trainable_pos_channels
        return fourier_output_size(2, self.num_bands, concat_pos=self.concat_pos, sine_only=self.sine_only)

    @property
    def output_channels(self) -> int:
        """Channels of the tokens fed to the encoder."""
        if self.concat_or_add_pos == "add":
            return self.feature_channels
        return self.feature_channels + self.pos_channels

    @property
    def token_channels(self) -> int:
        """Channels of the tokens fed to the encoder (every preprocessor config has it)."""
        return self.output_channels

    def debug_size(self) -> ImagePreprocessorConfig:
        """The same preprocessing at test size: images ``4 * spatial_downsample`` pixels a side (4x4 tokens), at
        most 8 channels and 4 Fourier bands (channels are kept where positions are added to the features)."""
        side = 4 * self.spatial_downsample
        small: dict = dict(image_size=(side, side), max_resolution=None)
        if self.concat_or_add_pos == "concat":
            small.update(num_channels=min(self.num_channels, 8), num_bands=min(self.num_bands, 4),
                         trainable_pos_channels=min(self.trainable_pos_channels, 8),
                         project_pos_dim=min(self.project_pos_dim, 8))
        config = self.replace(**small)
        return config if self.max_resolution is None else config.replace(max_resolution=config.grid)


#: ``ImagePreprocessorConfig.conv_padding`` values: official TF-SAME, or HF transformers' padding.
CONV_PADDINGS = ("tf_same", "hf")


def prep_grid(cfg: ImagePreprocessorConfig, h: int, w: int) -> tuple[int, int]:
    """Token grid after preprocessing an ``h x w`` image."""
    s = cfg.spatial_downsample
    if cfg.prep_type == "conv":
        for _ in range(round(math.log(s, 4))):
            h, w = -(-h // 2), -(-w // 2)  # conv 7x7/2, SAME or HF's (3, 3) padding: ceil(h/2) either way
            if cfg.conv_padding == "hf":
                h, w = max((h - 3) // 2 + 1, 0), max((w - 3) // 2 + 1, 0)  # max-pool 3x3/2 unpadded (HF)
            else:
                h, w = -(-h // 2), -(-w // 2)  # max-pool 3x3/2, SAME
        return h, w
    if cfg.prep_type == "patches":
        return h // s, w // s
    return -(-h // s), -(-w // s)  # pixels slicing and conv1x1 SAME: ceil(h/s)


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

    See :class:`ImagePreprocessorConfig` for the four ``prep_type``s.
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
