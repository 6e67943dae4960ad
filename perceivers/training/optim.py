"""Optimisers and learning-rate schedules of the training engine.

``LAMB`` follows the official Perceiver IO ImageNet recipe (optax's ``lamb``: Adam moments with bias
correction, decoupled weight decay added to the update, then a per-tensor trust ratio
``||w|| / ||update||``). Schedules are pure functions of the step, so resuming needs only the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from perceivers.core.optim import adamw

__all__ = ["LAMB", "OPTIMIZERS", "SCHEDULES", "adamw", "build_optimizer", "lr_factor", "param_groups"]

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("cosine", "constant_cosine", "linear", "constant")


class LAMB(torch.optim.Optimizer):
    """Layer-wise adaptive moments (You et al. 2019) as in optax: for every parameter tensor ``w``

    ``m, v`` = Adam moments of the gradient (bias-corrected), ``u = m / (sqrt(v) + eps) + wd * w``,
    ``w <- w - lr * r * u`` with ``r = ||w|| / ||u||`` (``r = 1`` when either norm is zero).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"lr={lr!r} is invalid: expected > 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={betas!r} is invalid: expected two floats in [0, 1)")
        if not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"eps={eps!r} must be > 0 and weight_decay={weight_decay!r} >= 0")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update + group["weight_decay"] * p
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm.clamp_min(1e-30),
                                    torch.ones_like(w_norm))
                p.sub_(update * (group["lr"] * trust))
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices, latents and position tables; none on biases and norm parameters (tensors
    with at most one dimension), as the official recipe (``decay_pos_embs=True``)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float | None, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW (eps 1e-8 by default; fused where supported and ``fused``, see :func:`adamw`) or LAMB (eps 1e-6,
    official) over :func:`param_groups`."""
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return adamw(groups, fused=fused, lr=lr, betas=betas, eps=1e-8 if eps is None else eps)
    if name == "lamb":
        return LAMB(groups, lr=lr, betas=betas, eps=1e-6 if eps is None else eps)
    raise ValueError(f"optimizer={name!r} is invalid: expected one of {OPTIMIZERS}")


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int,
              constant_fraction: float = 0.5) -> float:
    """Multiplier of the base LR at 0-based optimiser ``step``.

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    ``cosine`` (to 0 at ``total_steps``), ``linear`` (to 0), ``constant``, or ``constant_cosine``
    (flat until ``constant_fraction`` of training, then cosine to 0: the official ImageNet schedule).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is invalid: expected one of {SCHEDULES}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    start = warmup_steps
    if schedule == "constant_cosine":
        start = max(warmup_steps, int(constant_fraction * total_steps))
        if step < start:
            return 1.0
    progress = min(1.0, (step - start) / max(1, total_steps - start))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
