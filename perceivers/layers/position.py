"""Position encodings: Fourier features, trainable tables, projection and concat/add.

Fourier features follow the official ``position_encoding.py``: positions from ``linspace(-1, 1, n)``
per axis (endpoints included, ``meshgrid(indexing='ij')``, flattened row-major), frequencies
``linspace(1, max_resolution/2, K)`` per axis, channel order
``[x_1..x_d, sin(pi f_k x_i) (i-major, k-minor), cos(...) same order]``, size ``d*(2K+1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from perceivers.core.validation import fail
from perceivers.layers.init import init_linear_haiku, init_trunc_normal


def grid_positions(index_dims: Sequence[int], *, device=None, dtype=torch.float32) -> Tensor:
    """Positions of a full grid in [-1, 1]: ``(prod(index_dims), d)``, row-major, endpoints included."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in index_dims]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, len(index_dims))


def subsampled_positions(flat_indices: Tensor, index_dims: Sequence[int], *, dtype=torch.float32) -> Tensor:
    """Positions of flat indices into ``index_dims``: ``(..., d)`` with ``-1 + 2*coord/n`` per axis.

    This is the official subsampled-query convention, which differs slightly from the
    ``linspace(-1, 1, n)`` grid of full decoding (it never reaches +1).
    """
    coords = torch.unravel_index(flat_indices, tuple(index_dims))
    sizes = torch.tensor(list(index_dims), dtype=dtype, device=flat_indices.device)
    return -1.0 + 2.0 * torch.stack(coords, dim=-1).to(dtype) / sizes


def fourier_features(
    pos: Tensor, *, num_bands: int, max_resolution: Sequence[int], concat_pos: bool = True, sine_only: bool = False
) -> Tensor:
    """``pos: (..., N, d)`` in [-1, 1] -> features ``(..., N, d*(2K+1))`` in the official channel order."""
    d = pos.shape[-1]
    if d != len(max_resolution):
        raise ValueError(f"pos has {d} dims but max_resolution has {len(max_resolution)} entries")
    freqs = torch.stack(
        [torch.linspace(1.0, r / 2.0, num_bands, device=pos.device, dtype=pos.dtype) for r in max_resolution]
    )  # (d, K)
    per_pos = (pos[..., :, None] * freqs).flatten(-2)  # (..., N, d*K): dimension-major, band-minor
    per_pos = math.pi * per_pos
    enc = [torch.sin(per_pos)] if sine_only else [torch.sin(per_pos), torch.cos(per_pos)]
    if concat_pos:
        enc.insert(0, pos)
    return torch.cat(enc, dim=-1)


def fourier_output_size(num_dims: int, num_bands: int, *, concat_pos: bool = True, sine_only: bool = False) -> int:
    """Channels of :func:`fourier_features`: ``d*K*(1 if sine_only else 2) + (d if concat_pos else 0)``."""
    return num_dims * num_bands * (1 if sine_only else 2) + (num_dims if concat_pos else 0)


class FourierPositionEncoding(nn.Module):
    """Fourier features over a grid; no parameters. Features are cached per (shape, device, dtype).

    ``max_resolution`` defaults to ``index_dims`` (official). Any grid size can be encoded: positions
    always span [-1, 1], so an image of another size gets a re-normalised grid.
    """

    def __init__(
        self,
        index_dims: Sequence[int],
        *,
        num_bands: int,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
    ) -> None:
        super().__init__()
        self.index_dims = tuple(index_dims)
        self.num_bands = num_bands
        self.max_resolution = tuple(max_resolution) if max_resolution is not None else self.index_dims
        if len(self.max_resolution) != len(self.index_dims):
            fail("max_resolution", self.max_resolution, f"one entry per index dim {self.index_dims}")
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_channels(self) -> int:
        return fourier_output_size(len(self.index_dims), self.num_bands, concat_pos=self.concat_pos,
                                   sine_only=self.sine_only)

    def _features(self, pos: Tensor) -> Tensor:
        return fourier_features(pos, num_bands=self.num_bands, max_resolution=self.max_resolution,
                                concat_pos=self.concat_pos, sine_only=self.sine_only)

    def forward(
        self,
        batch_size: int,
        *,
        index_dims: Sequence[int] | None = None,
        pos: Tensor | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Features ``(B, prod(index_dims), F)``; with per-example ``pos: (B, N, d)`` -> ``(B, N, F)``."""
        if pos is not None:
            return self._features(pos.to(dtype))
        dims = self.index_dims if index_dims is None else tuple(index_dims)
        if torch.compiler.is_compiling():  # traced into the graph (Dynamo cannot read the inference mode below)
            return self._features(grid_positions(dims, device=device)).to(dtype).unsqueeze(0).expand(batch_size, -1, -1)
        # Tensors created under inference_mode cannot be saved for backward later: cache them apart.
        key = (dims, str(device), dtype, torch.is_inference_mode_enabled())
        feats = self._cache.get(key)
        if feats is None:
            # Computed in float32 (float64 on CPU is not needed: the official code uses float32).
            feats = self._features(grid_positions(dims, device=device)).to(dtype)
            self._cache[key] = feats
        return feats.unsqueeze(0).expand(batch_size, -1, -1)


class TrainablePositionEncoding(nn.Module):
    """A learned table ``pos_embs: (N, C)``, truncated-normal init (std ``init_scale``, default 0.02).

    Like the official code it ignores positions: subsampled queries still return the full table.
    """

    def __init__(self, index_dim: int, num_channels: int, *, init_scale: float = 0.02) -> None:
        super().__init__()
        self.init_scale = init_scale
        self.pos_embs = nn.Parameter(torch.empty(index_dim, num_channels))
        self.init_weights()  # usable on its own; a no-op on the meta device

    @property
    def num_channels(self) -> int:
        return self.pos_embs.shape[1]

    def init_weights(self) -> None:
        init_trunc_normal(self.pos_embs, self.init_scale)

    def forward(self, batch_size: int) -> Tensor:
        """``-> (B, N, C)``."""
        return self.pos_embs.unsqueeze(0).expand(batch_size, -1, -1)


class PositionEncoder(nn.Module):
    """Builds position features (Fourier, trainable or none), optionally projects them
    (``project_pos_dim > 0``: ``Linear(F -> project_pos_dim)``) and concatenates or adds them to
    the inputs ``(B, M, C)`` -> ``(B, M, C')``.
    """

    def __init__(
        self,
        *,
        kind: str,
        index_dims: Sequence[int],
        input_channels: int,
        num_bands: int = 64,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
        trainable_channels: int = 256,
        init_scale: float = 0.02,
        project_pos_dim: int = 0,
        concat_or_add: str = "concat",
    ) -> None:
        super().__init__()
        self.kind = kind
        self.index_dims = tuple(index_dims)
        self.concat_or_add = concat_or_add
        self.input_channels = input_channels
        self.encoding: FourierPositionEncoding | TrainablePositionEncoding | None
        if kind == "fourier":
            self.encoding = FourierPositionEncoding(index_dims, num_bands=num_bands, max_resolution=max_resolution,
                                                    concat_pos=concat_pos, sine_only=sine_only)
        elif kind == "trainable":
            self.encoding = TrainablePositionEncoding(math.prod(index_dims), trainable_channels, init_scale=init_scale)
        elif kind == "none":
            self.encoding = None
        else:
            fail("position encoding kind", kind, "one of ('fourier', 'trainable', 'none')")
        raw = 0 if self.encoding is None else self.encoding.num_channels
        self.projection = nn.Linear(raw, project_pos_dim) if project_pos_dim > 0 and raw > 0 else None
        self.pos_channels = project_pos_dim if self.projection is not None else raw
        if concat_or_add == "add" and self.pos_channels not in (0, input_channels):
            fail("concat_or_add_pos", concat_or_add, f"'concat' unless the position channels ({self.pos_channels}) "
                 f"equal the input channels ({input_channels})")
        self.output_channels = input_channels + (self.pos_channels if concat_or_add == "concat" else 0)

    def init_weights(self) -> None:
        if isinstance(self.encoding, TrainablePositionEncoding):
            self.encoding.init_weights()
        if self.projection is not None:
            init_linear_haiku(self.projection)

    def positions(self, batch_size: int, index_dims: Sequence[int], *, device, dtype) -> Tensor | None:
        """Position features ``(B, prod(index_dims), pos_channels)`` or ``None``."""
        if self.encoding is None:
            return None
        if isinstance(self.encoding, FourierPositionEncoding):
            pos = self.encoding(batch_size, index_dims=index_dims, device=device, dtype=dtype)
        else:
            pos = self.encoding(batch_size)
        return self.projection(pos) if self.projection is not None else pos

    def forward(self, x: Tensor, index_dims: Sequence[int]) -> Tensor:
        """``x: (B, prod(index_dims), C)`` -> ``(B, M, output_channels)``."""
        pos = self.positions(x.shape[0], index_dims, device=x.device, dtype=x.dtype)
        if pos is None:
            return x
        if self.concat_or_add == "concat":
            return torch.cat([x, pos], dim=-1)
        return x + pos
