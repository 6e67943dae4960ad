"""Training and evaluation loop for byte-level Perceiver AR language models (step-based).

The loss is the mean cross-entropy of the latent predictions: latent ``i`` of a window with ``L``
valid inputs sits at ``s_i = L - N + i`` and predicts token ``s_i + 1`` (reference A.12, without the
z-loss). Evaluation reports bits per byte on fixed windows, scoring the last ``N`` targets of each.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from perceivers.data.text import bits_per_byte
from perceivers.training.optim import lr_factor, param_groups
from perceivers.training.trainer import validate_optimisation


@dataclass(frozen=True, kw_only=True)
class LMTrainConfig:
    """Step-based optimisation settings (AdamW, linear warm-up then cosine to 0, global-norm clipping)."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        validate_optimisation(self, counts=("steps", "batch_size"), fractions=("warmup_fraction",))


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
                           batch_size: int = 16, device: str = "cpu") -> dict[str, float]:
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


def train_lm(model: nn.Module, sample_batch: Callable[[torch.Generator], tuple[Tensor, Tensor]],
             config: LMTrainConfig, *, num_latents: int, progress: bool = True) -> dict[str, float]:
    """Train ``model`` for ``config.steps`` steps on batches ``sample_batch(generator) -> (windows, lengths)``."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(config.device).train()
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, schedule="cosine", total_steps=config.steps,
                                     warmup_steps=max(1, int(config.warmup_fraction * config.steps))))
    start = time.perf_counter()
    bar = tqdm(total=config.steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    running = None
    for step in range(config.steps):
        windows, lengths = sample_batch(generator)
        loss = lm_loss(model, windows.to(config.device), lengths.to(config.device), num_latents)
        if not torch.isfinite(loss):
            bar.close()
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", bpb=f"{running / math.log(2):.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
    bar.close()
    model.eval()
    return {"train_loss": float(running or 0.0), "train_seconds": time.perf_counter() - start,
            "steps": config.steps}
