"""Multi-head attention on ``scaled_dot_product_attention`` with the official Perceiver semantics.

Shapes: queries ``x_q: (B, N, C_q)``, keys/values ``x_kv: (B, M, C_kv)``; a mask is boolean with
``True`` = attend, either a key-padding mask ``(B, M)`` or a full mask ``(B, N, M)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.layers.init import init_linear_fan_in


def check_mask(mask: Tensor | None, *, batch: int, num_queries: int, num_keys: int, name: str = "mask") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``mask`` is a bool ``(B, M)`` or ``(B, N, M)`` tensor."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool (True = attend), got {mask.dtype}")
    if tuple(mask.shape) not in ((batch, num_keys), (batch, num_queries, num_keys)):
        raise ValueError(
            f"{name} must have shape (B, M)=({batch}, {num_keys}) or (B, N, M)=({batch}, {num_queries}, "
            f"{num_keys}), got {tuple(mask.shape)}"
        )


def check_positive(**sizes: int) -> None:
    """Raise ``ValueError`` unless every size is an int >= 1 (naming the offending argument)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1")


class Attention(nn.Module):
    """Q/K/V/O linears with bias and independent qk / v widths; heads own contiguous channel slices.

    Logits are scaled by ``1/sqrt(qk_channels // num_heads)``. A query row whose keys are all masked
    gets an attention result (value average, before the output projection) of exactly zero, so the
    module returns the output-projection bias there (official ``perceiver.py`` ``attend``); HF
    transformers instead averages uniformly over the masked keys. The ``(B, H, N, M)`` probabilities
    are never materialised here: the fused SDPA kernel computes them.
    """

    def __init__(
        self,
        *,
        q_in_channels: int,
        kv_in_channels: int,
        qk_channels: int,
        v_channels: int,
        output_channels: int,
        num_heads: int = 1,
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive(q_in_channels=q_in_channels, kv_in_channels=kv_in_channels, qk_channels=qk_channels,
                       v_channels=v_channels, output_channels=output_channels, num_heads=num_heads)
        for field, value in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if value % num_heads != 0:
                raise ValueError(f"{field}={value} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout_prob = dropout_prob
        self.q_proj = nn.Linear(q_in_channels, qk_channels)
        self.k_proj = nn.Linear(kv_in_channels, qk_channels)
        self.v_proj = nn.Linear(kv_in_channels, v_channels)
        self.o_proj = nn.Linear(v_channels, output_channels)

    def init_weights(self) -> None:
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            init_linear_fan_in(linear)

    def forward(self, x_q: Tensor, x_kv: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x_q: (B, N, C_q)``, ``x_kv: (B, M, C_kv)``, ``mask: (B, M) | (B, N, M)`` bool -> ``(B, N, C_out)``."""
        b, n, _ = x_q.shape
        m = x_kv.shape[1]
        check_mask(mask, batch=b, num_queries=n, num_keys=m)
        h = self.num_heads
        q = self.q_proj(x_q).view(b, n, h, -1).transpose(1, 2)  # (B, H, N, Dqk)
        k = self.k_proj(x_kv).view(b, m, h, -1).transpose(1, 2)  # (B, H, M, Dqk)
        v = self.v_proj(x_kv).view(b, m, h, -1).transpose(1, 2)  # (B, H, M, Dv)
        attn_mask = None
        row_valid = None
        if mask is not None:
            full = mask[:, None, :].expand(b, n, m) if mask.dim() == 2 else mask  # (B, N, M)
            row_valid = full.any(dim=-1)  # (B, N)
            # Rows with no valid key attend everywhere (finite, never NaN) and are zeroed below.
            full = full | ~row_valid[..., None]
            attn_mask = full[:, None]  # (B, 1, N, M)
        dropout = self.dropout_prob if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, n, -1)  # (B, N, H*Dv)
        if row_valid is not None:
            out = out * row_valid[..., None].to(out.dtype)
        return self.o_proj(out)
