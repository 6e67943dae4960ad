"""A tiny synthetic classification task for the engine tests (a few thousand parameters, a few ms per step), and
the helpers those tests share (quiet runs, saved weights compared exactly).

Test hooks: ``kill_at`` / ``interrupt_at`` / ``freeze_at`` send SIGKILL / SIGINT / SIGSTOP to this process at that
training-loss call, ``nan_at`` makes that call's loss NaN (``nan_from``: that call and every later one). Calls are
counted per process (one per micro-batch). The hooks are not settings: a resumed run may drop them.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from perceivers import DecoderConfig, EncoderConfig, PerceiverIO, PerceiverIOConfig
from perceivers.training.config import EngineConfig
from perceivers.training.losses import classification_loss
from perceivers.training.task import Task

QUIET = {"progress": False, "log": lambda *a, **k: None}
#: The engine tests' run: 4 epochs of TinyTask's 96 examples = 12 steps, a checkpoint every 3.
SHORT = EngineConfig(epochs=4, batch_size=32, lr=3e-3, checkpoint_every=3, log_every=1, keep_last=3)


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The saved model of a finished run."""
    return load_file(run / "model" / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """6 noisy tokens of 8 channels around one of 3 fixed means; the label is which mean."""
    means = torch.randn(3, 8, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return means[y][:, None, :] + 1.5 * torch.randn(n, 6, 8, generator=g), y


@dataclass
class TinyTask(Task):
    name: ClassVar[str] = "tiny"

    n_train: int = 96
    noise: float = 0.1  # random augmentation from the global RNG (0: deterministic loss)
    dropout: float = 0.0
    label_smoothing: float = 0.0
    kill_at: int | None = None
    interrupt_at: int | None = None
    nan_at: int | None = None
    nan_from: int | None = None
    freeze_at: int | None = None
    calls: int = field(default=0, init=False)

    HOOKS: ClassVar[tuple[str, ...]] = ("kill_at", "interrupt_at", "nan_at", "nan_from", "freeze_at")

    def settings(self) -> dict:
        return {k: v for k, v in super().settings().items() if k not in self.HOOKS}

    def build_model(self) -> nn.Module:
        enc = EncoderConfig(num_latents=4, num_latent_channels=16, num_blocks=1, num_self_attends_per_block=2,
                            num_self_attend_heads=2, dropout_prob=self.dropout)
        dec = DecoderConfig(type="classification", num_outputs=3, num_query_channels=16, use_query_residual=True)
        return PerceiverIO(PerceiverIOConfig(input_channels=8, encoder=enc, decoder=dec))

    def train_dataset(self, seed: int) -> TensorDataset:
        return TensorDataset(*synthetic(self.n_train, 0))

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        if self.calls == self.freeze_at:
            os.kill(os.getpid(), signal.SIGSTOP)
        x, y = batch
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        logits = model(x)
        loss = classification_loss(logits, y, self.label_smoothing)
        if self.calls == self.nan_at or (self.nan_from is not None and self.calls >= self.nan_from):
            loss = loss * float("nan")
        return loss, {"accuracy": float((logits.argmax(-1) == y).float().mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = synthetic(64, 1)
        logits = model(x)
        return {"test_accuracy": float((logits.argmax(-1) == y).float().mean()),
                "test_loss": float(classification_loss(logits, y))}

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        (out_dir / "on_end.txt").write_text("done")
