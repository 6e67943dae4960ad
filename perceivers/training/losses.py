"""Losses and held-out metrics of the built-in tasks: classification (digits, HiP fine-tuning) and byte-level
language modelling with Perceiver AR (text, copy).

The LM loss is the mean cross-entropy of the latent predictions: latent ``i`` of a window with ``L`` valid inputs
sits at ``s_i = L - N + i`` and predicts token ``s_i + 1`` (the official loss without its z-loss; see
docs/training.md#perceiver-ar-language-modelling-loss). Evaluation reports bits per byte on fixed windows, scoring
the last ``N`` targets of each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.data.text import bits_per_byte


def classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``logits (B, K)`` against ``labels (B,)``, computed in float32."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256,
                        device: str | torch.device = "cpu",
                        inputs: Callable[[Tensor], Any] | None = None) -> dict[str, float]:
    """Accuracy and mean (unsmoothed) cross-entropy of a classifier on ``images (N, ...)``, ``labels (N,)``;
    ``inputs`` turns a batch of images into the model's input (default: the images themselves)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        logits = model(x if inputs is None else inputs(x))
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    model.train(was_training)
    n = len(images)
    return {"accuracy": correct / n, "loss": loss_sum / n, "num_examples": n}


def latent_targets(windows: Tensor, lengths: Tensor, num_latents: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split windows ``(B, W)`` with valid lengths ``(B,)`` into inputs ``(B, W-1)``, their lengths ``(B,)``
    and the targets ``(B, N)`` of the ``N`` latents."""
    inputs, input_lengths = windows[:, :-1], lengths - 1
    steps = input_lengths[:, None] - num_latents + torch.arange(num_latents, device=windows.device)  # (B, N)
    if int(steps.min()) < 0:
        raise ValueError(f"every window needs at least num_latents + 1 = {num_latents + 1} tokens")
    return inputs, input_lengths, windows.gather(1, steps + 1)


def lm_loss(model: nn.Module, windows: Tensor, lengths: Tensor, num_latents: int) -> Tensor:
    """Mean next-token cross-entropy over the latent predictions of a batch of windows."""
    inputs, input_lengths, targets = latent_targets(windows, lengths, num_latents)
    logits = model(inputs, input_lengths, num_latents=num_latents)  # (B, N, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def evaluate_bits_per_byte(model: nn.Module, windows: Tensor, *, num_latents: int, context: int | None = None,
                           batch_size: int = 16, device: str | torch.device = "cpu") -> dict[str, float]:
    """Bits per byte of the last ``num_latents`` targets of full windows ``(K, W)``, each seen through its
    last ``context`` inputs (default ``W - 1``, all of them)."""
    was_training = model.training
    model.eval()
    width = windows.shape[1] - 1
    context = width if context is None else context
    if not num_latents <= context <= width:
        raise ValueError(f"context={context} must lie in [num_latents={num_latents}, {width}]")
    bits, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        w = windows[start:start + batch_size].to(device)
        logits = model(w[:, width - context:width], num_latents=num_latents)  # (B, N, V)
        b, n = bits_per_byte(logits, w[:, -num_latents:])
        bits, count = bits + b, count + n
    model.train(was_training)
    return {"bits_per_byte": bits / max(count, 1), "num_predicted_bytes": count}
