"""Attention for bf16 / fp16 training on CPU: two batched GEMMs and a softmax where the fused kernel is slow.

PyTorch's CPU flash-attention kernel runs a bf16 forward fast, but its backward takes 5-10x the forward and about
twice the unfused path (logits GEMM, softmax, value GEMM, each with its own backward): under
``torch.autocast("cpu", torch.bfloat16)`` it was the largest single cost of our training step (issue 14). So for
CPU training in bf16 / fp16, attention whose ``(B, H, N, M)`` probabilities fit in :data:`MATH_MAX_ELEMENTS` runs
unfused; the softmax keeps its statistics (max, sum) in fp32 inside the kernel, only its input logits and output
probabilities are rounded to the low precision, like every peer under autocast. Longer attention (a cross-attention
over long inputs) stays on the fused kernel, which never holds the probabilities: memory stays linear in M.

This is the one place where the package builds attention probabilities itself, a deliberate and bounded exception
to the rule that attention goes through ``F.scaled_dot_product_attention``: at most :data:`MATH_MAX_ELEMENTS` values,
only when autograd records a bf16 / fp16 CPU call. SDPA's own math backend is no substitute: it upcasts reduced
precision to fp32 and measured 1.6x slower than the fused kernel and 3.9x slower than this path (forward +
backward, (8, 8, 256, 256) x 64 in bf16, one thread, 2026-12-04).

:func:`use_unfused_attention` says when the path applies; everything else, fp32 (the default) and inference
included, stays on ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: largest ``B * H * N * M`` attended unfused (16 MiB of bf16 probabilities; saved for the backward).
MATH_MAX_ELEMENTS = 1 << 23
REDUCED = (torch.bfloat16, torch.float16)


def use_unfused_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float,
                          max_elements: int = MATH_MAX_ELEMENTS) -> bool:
    """Whether :func:`unfused_attention` serves this call: CPU, bf16 / fp16 ``q, k, v`` of one dtype, autograd
    recording, no attention dropout, and ``B * H * N * M <= max_elements``."""
    b, h, n, _ = q.shape
    return (q.device.type == "cpu" and q.dtype in REDUCED and q.dtype == k.dtype == v.dtype and dropout_p == 0.0
            and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            and b * h * n * k.shape[2] <= max_elements)


def unfused_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None) -> Tensor:
    """``q: (B, H, N, Dqk)``, ``k: (B, H, M, Dqk)``, ``v: (B, H, M, Dv)``, optional boolean ``keep: (B, 1, 1|N, M)``
    (True = attend; every row must keep at least one key) -> ``softmax(q k^T / sqrt(Dqk)) v``: ``(B, H, N, Dv)``."""
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, H, N, M)
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.matmul(logits.softmax(dim=-1), v)
