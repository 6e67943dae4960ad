"""Perceiver IO optical flow (official ``optical_flow.ipynb``; HF ``PerceiverForOpticalFlow``).

Frame pairs ``(B, 2, 3, H, W)`` in [-1, 1] -> 3x3 patches per pixel and frame -> 322-channel tokens ->
2,048 x 512 latents, 24 self-attention layers -> every token queries the latents -> flow ``(B, H, W, 2)``
in pixels (the colab's x20; ``decoder.flow_scale_factor=1.0`` gives HF's raw output). The model runs at
``preprocessor.image_size`` (368 x 496 officially); :meth:`PerceiverIOFlow.forward_tiled` covers larger
images with overlapping tiles blended by distance to the tile edge (official colab).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perceivers.decoders.flow import check_chunk_size
from perceivers.models.perceiver_io.model import PerceiverIO
from perceivers.preprocessors.flow import (
    extract_flow_patches,
    tile_starts,
    tile_weights,
)


class PerceiverIOFlow(PerceiverIO, preprocessor="flow"):
    """``frames: (B, T, C, H, W)`` (or precomputed ``patches: (B, T, P*P*C, H, W)``) -> ``(B, H, W, 2)``.

    Built by ``PerceiverIO(config)`` for a config with a ``flow`` preprocessor and decoder; the flow head
    starts at zero (official initialisation).
    """

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward``: ``frames: (B, T, C, H, W)`` uniform in [-1, 1) at
        ``image_size``."""
        p = self.config.preprocessor
        frames = torch.rand(batch_size, p.num_frames, p.in_channels, *p.image_size, generator=generator) * 2 - 1
        return {"frames": frames.to(self.encoder.latents)}

    def _check(self, x: Tensor, name: str, channels: int, what: str) -> None:
        p = self.config.preprocessor
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point in [-1, 1] (uint8 images: see frames_from_images), "
                            f"got dtype {x.dtype}")
        self.check_dtype(x, name)
        expected = f"(B, {p.num_frames}, {channels}, H, W) ({what})"
        if x.dim() != 5:
            raise ValueError(f"{name} must have shape {expected}, got rank {x.dim()} {tuple(x.shape)}")
        if x.shape[1] != p.num_frames or x.shape[2] != channels:
            hint = " (channels-last? use x.permute(0, 1, 4, 2, 3))" if x.shape[-1] == channels else ""
            raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one example, got shape {tuple(x.shape)}")

    def patches(self, frames: Tensor | None, patches: Tensor | None) -> Tensor:
        """Validated patches ``(B, T, P*P*C, H, W)`` from exactly one of ``frames`` / ``patches``."""
        p = self.config.preprocessor
        if (frames is None) == (patches is None):
            raise ValueError("pass exactly one of frames (B, T, C, H, W) or patches (B, T, P*P*C, H, W)")
        if frames is not None:
            self._check(frames, "frames", p.in_channels, "raw frames, channels before H, W")
            patches = extract_flow_patches(frames, p.patch_size)
        else:
            self._check(patches, "patches", p.patch_channels, f"{p.patch_size}x{p.patch_size} patches per pixel")
        if tuple(patches.shape[-2:]) != p.image_size:
            raise ValueError(f"frames are {patches.shape[-2]}x{patches.shape[-1]}, expected image_size="
                             f"{p.image_size}; use forward_tiled for larger images")
        return patches

    def forward_features(self, frames: Tensor | None = None, *,  # type: ignore[override]
                         patches: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode: ``-> (latents (B, N, D), tokens (B, H*W, C))``; the tokens are the decoder queries."""
        tokens, _, _ = self.preprocessor(self.patches(frames, patches))
        return self.encoder(tokens), tokens

    def forward(self, frames: Tensor | None = None, *, patches: Tensor | None = None,  # type: ignore[override]
                chunk_size: int | None = None) -> Tensor:
        """``frames: (B, T, C, H, W)`` in [-1, 1] (or ``patches``) -> flow ``(B, H, W, 2)``.

        ``chunk_size``: queries decoded at a time (default ``config.decoder.chunk_size``).
        """
        check_chunk_size(chunk_size)
        z, tokens = self.forward_features(frames, patches=patches)
        flow = self.decoder(z, tokens, chunk_size=chunk_size)  # (B, H*W, 2)
        h, w = self.config.preprocessor.image_size
        return flow.reshape(flow.shape[0], h, w, flow.shape[-1])  # (B, H, W, 2)

    def forward_tiled(self, frames: Tensor, *, min_overlap: int = 20, chunk_size: int | None = None) -> Tensor:
        """Flow ``(B, H, W, 2)`` of frames at least ``image_size`` large, from overlapping tiles of
        ``image_size`` (official colab: ``min_overlap`` 20, tiles weighted by their 1-based distance to the
        tile edge and averaged). Patches are extracted per tile, as in the colab."""
        p = self.config.preprocessor
        self._check(frames, "frames", p.in_channels, "raw frames, channels before H, W")
        (th, tw), (h, w) = p.image_size, frames.shape[-2:]
        try:
            ys, xs = tile_starts(h, th, min_overlap), tile_starts(w, tw, min_overlap)
        except ValueError as exc:
            raise ValueError(f"forward_tiled on {h}x{w} frames with {th}x{tw} tiles: {exc}") from exc
        weights = tile_weights((th, tw), device=frames.device, dtype=frames.dtype)[None, :, :, None]  # (1, th, tw, 1)
        flow = frames.new_zeros(frames.shape[0], h, w, self.config.decoder.num_outputs)
        total = frames.new_zeros(1, h, w, 1)
        for y in ys:
            for x in xs:
                piece = self(frames[..., y:y + th, x:x + tw], chunk_size=chunk_size)  # (B, th, tw, 2)
                flow[:, y:y + th, x:x + tw] += piece * weights
                total[:, y:y + th, x:x + tw] += weights
        return flow / total
