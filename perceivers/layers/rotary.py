"""Rotary position embeddings with the official Perceiver AR conventions.

- Per head, only the first ``R = floor(head_dim * fraction / 2) * 2`` channels are rotated; the rest
  pass through unchanged (official ``fraction_to_rotate``; every head is rotated).
- Pairs are interleaved (GPT-J style): channels ``(2k, 2k+1)`` share a frequency and
  ``out[2k] = x[2k] cos - x[2k+1] sin``, ``out[2k+1] = x[2k+1] cos + x[2k] sin``.
- Wavelengths ``max_wavelength ** ((2/R) * linspace(0, R/2, R/2))``: ``linspace`` includes its endpoint,
  so they run from exactly 1 to exactly ``max_wavelength`` (not base 10000). The angle is
  ``position / wavelength`` (no 2*pi).

Nothing here is a parameter or a buffer: angles are computed from the positions at each call (a few
multiplications), so models built on the meta device need no re-materialisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from perceivers.core.validation import check_float, check_int, fail


class Rotary(NamedTuple):
    """Cosines and sines of the rotation angles, each ``(B, T, R)`` (pair members repeated).

    ``signed_sin`` (optional, same shape): ``sin`` with the first member of every pair negated, which
    :func:`apply_rotary` needs; :class:`RotaryEmbedding` precomputes it so that one set of angles
    applied in many layers pays for it once.
    """

    cos: Tensor
    sin: Tensor
    signed_sin: Tensor | None = None


def rotary_channels(head_dim: int, fraction: float) -> int:
    """Number of rotated channels per head: ``floor(head_dim * fraction / 2) * 2``."""
    return int(head_dim * fraction // 2) * 2


def rotary_wavelengths(num_channels: int, max_wavelength: float, *, device=None) -> Tensor:
    """Wavelengths ``(R/2,)`` of the rotated pairs, float32, from 1 to ``max_wavelength`` inclusive."""
    k = num_channels // 2
    exponent = (2.0 / num_channels) * torch.linspace(0.0, float(k), k, device=device, dtype=torch.float32)
    return torch.tensor(float(max_wavelength), device=device, dtype=torch.float32) ** exponent


class RotaryEmbedding(nn.Module):
    """Maps integer positions ``(B, T)`` to :class:`Rotary` angles for heads of ``head_dim`` channels."""

    def __init__(self, *, head_dim: int, max_wavelength: float, fraction: float = 0.5) -> None:
        super().__init__()
        check_int("head_dim", head_dim)
        check_float("fraction", fraction, minimum=0.0, maximum=1.0, min_inclusive=False)
        if rotary_channels(head_dim, fraction) < 2:
            fail("fraction", fraction, f"head_dim * fraction >= 2 (one rotated pair of a {head_dim}-channel head)")
        check_float("max_wavelength", max_wavelength, minimum=1.0)
        self.head_dim = head_dim
        self.fraction = fraction
        self.num_channels = rotary_channels(head_dim, fraction)
        self.max_wavelength = max_wavelength
        self._inverse_wavelengths: dict[torch.device, Tensor] = {}  # per-device cache, not state

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotated={self.num_channels}, max_wavelength={self.max_wavelength}"

    def forward(self, positions: Tensor) -> Rotary:
        """``positions: (B, T)`` (0 = padding, rotated by angle 0) -> :class:`Rotary` with ``(B, T, R)``."""
        inverse = self._inverse_wavelengths.get(positions.device)
        if inverse is None:  # (R,): both members of a pair share a wavelength
            wavelengths = rotary_wavelengths(self.num_channels, self.max_wavelength, device=positions.device)
            inverse = (1.0 / wavelengths).repeat_interleave(2)
            self._inverse_wavelengths[positions.device] = inverse
        angles = positions.to(torch.float32)[..., None] * inverse  # (B, T, R)
        sin = angles.sin()
        return Rotary(angles.cos(), sin, _sign_pairs(sin))


def _sign_pairs(sin: Tensor) -> Tensor:
    """``(..., R)`` -> the same with channels ``2k`` negated."""
    return (sin.unflatten(-1, (-1, 2)) * sin.new_tensor([-1.0, 1.0])).flatten(-2)


def apply_rotary(x: Tensor, rotary: Rotary) -> Tensor:
    """Rotate the first ``R`` channels of every head. ``x: (B, H, T, D)`` -> ``(B, H, T, D)``."""
    r = rotary.cos.shape[-1]
    if r > x.shape[-1] or rotary.cos.shape[:2] != (x.shape[0], x.shape[2]):
        raise ValueError(f"rotary angles of shape {tuple(rotary.cos.shape)} do not fit heads of shape "
                         f"{tuple(x.shape)} (expected (B, T, R) with R <= head_dim)")
    signed_sin = _sign_pairs(rotary.sin) if rotary.signed_sin is None else rotary.signed_sin
    cos = rotary.cos[:, None].to(x.dtype)  # (B, 1, T, R)
    signed_sin = signed_sin[:, None].to(x.dtype)
    x_rot, x_pass = x[..., :r], x[..., r:]
    swapped = x_rot.unflatten(-1, (r // 2, 2)).flip(-1).flatten(-2)  # (x[2k+1], x[2k]) pairs: (B, H, T, R)
    return torch.cat((x_rot * cos + swapped * signed_sin, x_pass), dim=-1)
