"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
import torch
from testkit.engine import QUIET, SHORT, TinyTask, weights

from perceivers.training.loop import run_task


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> dict[str, torch.Tensor]:
    """The weights of an uninterrupted run of SHORT (12 steps) with dropout and random noise, so that restoring the
    RNG matters to the runs compared with it (under one thread, as those runs)."""
    out = tmp_path_factory.mktemp("reference")
    run_task(TinyTask(dropout=0.1), SHORT, out, **QUIET)
    return weights(out)
