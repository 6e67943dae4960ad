"""Optimiser construction shared by the training engine and the bench (torch only, so that the bench's worker
process does not import the training package: its resident-set figures are the model's)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(groups: Iterable, *, fused: bool = True, **options: object) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with its fused kernel (one pass over every parameter tensor: 16 ms against 79 ms for
    the default per-tensor loop on the 21.9 M-parameter bench classifier, two CPU threads) where this PyTorch and
    the parameters' device and dtype support it and ``fused`` is true, else the default implementation. Both
    follow the same update rule and differ in float rounding only. The fused kernel's rounding of an element can
    depend on how its tensor is laid out (measured: a 2-process FSDP2 run with it differs in the last bits from
    the same run in one process), so a sharded run that must equal an unsharded one bit for bit takes
    ``fused=False``, whose per-tensor loop does not depend on the sharding."""
    groups = list(groups)
    if not fused:
        return torch.optim.AdamW(groups, **options)  # type: ignore[arg-type]
    try:
        return torch.optim.AdamW(groups, fused=True, **options)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):  # fused unsupported here (old torch on CPU, device, dtype)
        return torch.optim.AdamW(groups, **options)  # type: ignore[arg-type]
