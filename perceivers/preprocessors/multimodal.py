"""Per-modality input processing and the official ``MultimodalPreprocessor`` (perceiver-io.md §9.3-9.5).

:class:`ModalityPreprocessor` reads one modality (``video``, ``audio`` or ``label``, see
:class:`~perceivers.models.perceiver_io.multimodal_config.ModalityConfig`) into tokens; :class:`MultimodalPreprocessor`
pads every modality's tokens to a common width with a learned per-modality vector, replaces tokens by a
learned mask token with each modality's probability, and concatenates the modalities in sorted name order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from perceivers.layers.init import init_trunc_normal
from perceivers.layers.position import FourierPositionEncoding
from perceivers.models.perceiver_io.multimodal_config import ModalityConfig


def video_space_to_depth(video: Tensor, temporal_patch: int, spatial_patch: int) -> Tensor:
    """``(B, T*dt, H*dh, W*dw, C)`` -> ``(B, T, H, W, dt*dh*dw*C)``, channel order (dt, dh, dw, c) (official)."""
    b, t, h, w, c = video.shape
    dt, s = temporal_patch, spatial_patch
    x = video.reshape(b, t // dt, dt, h // s, s, w // s, s, c)  # (B, T', dt, H', dh, W', dw, C)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T', H', W', dt, dh, dw, C)
    return x.reshape(b, t // dt, h // s, w // s, dt * s * s * c)


def _check_float(x: object, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


class ModalityPreprocessor(nn.Module):
    """One modality -> ``(tokens (B, M, C_in), features without positions (B, M, C_feat))``; no parameters.

    video ``(B, T, H, W, C)``: patches + 3-D Fourier features over the patch grid; audio ``(B, S)`` or
    ``(B, S, 1)``: patches of ``samples_per_patch`` + 1-D Fourier features; label ``(B, K)``: one token.
    """

    def __init__(self, config: ModalityConfig) -> None:
        super().__init__()
        self.config = c = config
        self.position: FourierPositionEncoding | None = None
        if c.kind != "label":
            self.position = FourierPositionEncoding(c.patch_grid, num_bands=c.num_bands,
                                                    max_resolution=c.input_max_resolution, concat_pos=c.concat_pos,
                                                    sine_only=c.sine_only)

    def check_input(self, x: Tensor, name: str) -> None:
        """``TypeError``/``ValueError`` naming ``name`` unless ``x`` is a valid input of this modality."""
        c = self.config
        _check_float(x, name)
        if c.kind == "video":
            dt, s = c.temporal_patch, c.spatial_patch
            if x.dim() != 5 or x.shape[-1] != c.in_channels:
                raise ValueError(f"{name} must be a video (B, T, H, W, C={c.in_channels}), got {tuple(x.shape)}")
            if 0 in x.shape or x.shape[1] % dt or x.shape[2] % s or x.shape[3] % s:
                raise ValueError(f"{name} frames/height/width {tuple(x.shape[1:4])} must be non-zero multiples of "
                                 f"the patch ({dt}, {s}, {s})")
        elif c.kind == "audio":
            if not (x.dim() == 2 or (x.dim() == 3 and x.shape[-1] == 1)):
                raise ValueError(f"{name} must be a waveform (B, S) or (B, S, 1), got {tuple(x.shape)}")
            if 0 in x.shape or x.shape[1] % c.samples_per_patch:
                raise ValueError(f"{name} has {x.shape[1]} samples: expected a non-zero multiple of "
                                 f"samples_per_patch={c.samples_per_patch}")
        elif x.dim() != 2 or x.shape[1] != c.num_classes or x.shape[0] == 0:
            raise ValueError(f"{name} must be (B, num_classes={c.num_classes}), got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        if c.kind == "label":
            feats = x[:, None, :]  # (B, 1, K): one token, no positions
            return feats, feats
        if c.kind == "video":
            grid = video_space_to_depth(x, c.temporal_patch, c.spatial_patch)  # (B, T', H', W', C_feat)
            dims = tuple(grid.shape[1:4])
            feats = grid.reshape(x.shape[0], -1, grid.shape[-1])  # (B, T'*H'*W', C_feat)
        else:
            feats = x.reshape(x.shape[0], -1, c.samples_per_patch)  # (B, S/spp, spp)
            dims = (feats.shape[1],)
        pos = self.position(x.shape[0], index_dims=dims, device=x.device, dtype=x.dtype)
        return torch.cat([feats, pos], dim=-1), feats


class MultimodalPreprocessor(nn.Module):
    """``{name: input}`` -> tokens ``(B, sum M_m, C_common)`` in sorted name order.

    Parameters: ``padding[name]: (1, C_common - C_m)`` (a modality embedding; broadcast over positions) and,
    for modalities with a ``mask_prob``, ``mask_token[name]: (1, C_common)``; truncated normal 0.02.
    """

    def __init__(self, modalities: Mapping[str, ModalityConfig], *, min_padding_size: int,
                 init_scale: float = 0.02) -> None:
        super().__init__()
        self.names = sorted(modalities)
        self.init_scale = init_scale
        self.modalities = nn.ModuleDict({n: ModalityPreprocessor(modalities[n]) for n in self.names})
        self.width = max(m.input_channels for m in modalities.values()) + min_padding_size
        self.padding = nn.ParameterDict({
            n: nn.Parameter(torch.empty(1, self.width - modalities[n].input_channels)) for n in self.names})
        self.mask_token = nn.ParameterDict({
            n: nn.Parameter(torch.empty(1, self.width)) for n in self.names if modalities[n].mask_prob is not None})
        self.init_weights()  # usable on its own; a no-op on the meta device

    def init_weights(self) -> None:
        for p in (*self.padding.values(), *self.mask_token.values()):
            init_trunc_normal(p, self.init_scale)

    def mask_prob(self, name: str, overrides: Mapping[str, float] | None) -> float:
        """The masking probability of ``name`` for this call (override, else config; 0 without a mask token)."""
        if overrides is not None and name in overrides:
            return float(overrides[name])
        p = self.modalities[name].config.mask_prob
        return 0.0 if p is None else float(p)

    def forward(self, inputs: Mapping[str, Tensor], *, mask_probs: Mapping[str, float] | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, int], dict[str, Tensor]]:
        """-> ``(tokens (B, M, C_common), {name: M_m}, {name: features without positions (B, M_m, C_feat)})``.

        Masking (official): token ``j`` of modality ``m`` becomes ``mask_token[m]`` with probability
        ``p_m`` (Bernoulli, ``generator`` if given), whether the module is training or not.
        """
        padded, sizes, feats = [], {}, {}
        for name in self.names:
            tokens, feats[name] = self.modalities[name](inputs[name])
            b, m, _ = tokens.shape
            pad = self.padding[name].to(tokens.dtype).expand(b, m, -1)  # (B, M_m, C_common - C_m)
            tokens = torch.cat([tokens, pad], dim=-1)  # (B, M_m, C_common)
            p = self.mask_prob(name, mask_probs)
            if p > 0.0:
                if p >= 1.0:
                    keep = torch.zeros(b, m, 1, dtype=torch.bool, device=tokens.device)
                else:
                    draw = torch.rand(b, m, 1, generator=generator, device=tokens.device)
                    keep = draw >= p  # masked with probability p
                tokens = torch.where(keep, tokens, self.mask_token[name].to(tokens.dtype))
            padded.append(tokens)
            sizes[name] = m
        return torch.cat(padded, dim=1), sizes, feats
