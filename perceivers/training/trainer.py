"""A small, seeded training loop for classifiers (AdamW, warm-up + cosine, clipping, progress bar).

Models know nothing of training: this module owns the loss, optimiser, schedule and evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm


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


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings; validated on construction."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        validate_optimisation(self, counts=("epochs", "batch_size"), fractions=("warmup_fraction", "label_smoothing"))

    def to_dict(self) -> dict:
        return asdict(self)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices, latents and position tables; none on biases and norm parameters
    (the official recipe's exclusions)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


def train_classifier(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    config: TrainConfig,
    *,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` on ``train=(images, labels)``; returns final training statistics.

    Seeded: the data order, augmentation and dropout draw from ``config.seed``.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = train
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = steps_per_epoch * config.epochs
    model.to(config.device).train()
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, max(1, int(config.warmup_fraction * total))))
    start = time.perf_counter()
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    running = None
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = augment(x, generator)
            x, y = x.to(config.device), y.to(config.device)
            loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
            if not torch.isfinite(loss):
                bar.close()
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {i}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running:.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
    bar.close()
    model.eval()
    return {"train_loss": float(running or 0.0), "train_seconds": time.perf_counter() - start, "steps": total}
