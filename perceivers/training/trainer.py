"""Helpers shared by the training code: validation of optimisation settings and classifier evaluation.

Models know nothing of training. The training loop itself is the engine (:mod:`perceivers.training.engine`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def validate_optimisation(cfg: object, *, counts: tuple[str, ...], fractions: tuple[str, ...]) -> None:
    """Shared checks of training configs: ``counts`` are ints >= 1, ``lr`` > 0, ``weight_decay`` and
    ``grad_clip`` >= 0, ``fractions`` in [0, 1). Raises ``ValueError`` naming the field."""
    for name in counts:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1")
    lr = getattr(cfg, "lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr={lr!r} is invalid: expected a positive float")
    for name in ("weight_decay", "grad_clip"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name}={getattr(cfg, name)!r} is invalid: expected >= 0")
    for name in fractions:
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)!r} is invalid: expected a float in [0, 1)")


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256,
             device: str = "cpu") -> dict[str, float]:
    """Accuracy and mean cross-entropy of a classifier on ``images (N, ...)``, ``labels (N,)``."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    model.train(was_training)
    n = len(images)
    return {"accuracy": correct / n, "loss": loss_sum / n, "num_examples": n}
