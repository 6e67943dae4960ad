"""What the loop needs around a step: the seeded data order, RNG seeding and isolation, stop signals, batches to the
device, and the error of a non-finite step.

Determinism: the data order of epoch ``e`` is a seeded permutation (a pure function of ``seed`` and ``e``) and the
position in it is the step counter; every RNG stream the loop seeds is saved in each checkpoint
(:mod:`perceivers.training.checkpoint`), so resuming on CPU ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from perceivers.core.errors import ConfigError


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/inf loss or gradient norm (``on_nonfinite='stop'``)."""


class DataOrder:
    """Global batches: epoch ``e`` visits a permutation seeded by ``(seed, e)``, ``batch_size`` items per step."""

    def __init__(self, size: int, batch_size: int, *, seed: int, drop_last: bool) -> None:
        if size < 1:
            raise ConfigError("the task's train_dataset() is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.steps_per_epoch = size // batch_size if drop_last else math.ceil(size / batch_size)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size={batch_size} exceeds the dataset size {size} with drop_last=True")
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def batch(self, step: int) -> Tensor:
        """Dataset indices ``(n,)`` of global step ``step`` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
        return self._perm[k * self.batch_size:(k + 1) * self.batch_size]


def to_device(batch: Any, device: torch.device) -> Any:
    """A collated batch (tensors, or dicts / lists / tuples of them) on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def seed_all(seed: int) -> None:
    """Seed torch (every device), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block (evaluation) without disturbing the training RNG streams."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


class StopRequest:
    """SIGINT/SIGTERM set a flag: the loop finishes its step, saves a checkpoint and exits. In one process a second
    Ctrl-C interrupts at once, and so does the first once ``immediate`` is set (the final evaluation and save);
    under torchrun repeated signals are ignored (the launcher forwards them)."""

    def __init__(self, world_size: int) -> None:
        self.requested, self.world_size, self.immediate = False, world_size, False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if (self.requested or self.immediate) and self.world_size == 1 and signum == signal.SIGINT:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
