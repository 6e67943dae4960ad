"""The engine across processes: SIGKILL at a random step then resume (bit-identical), a kill in the middle of a
save, and 2 gloo processes (torchrun's environment; DDP and FSDP2) against one process at the same global batch,
and interrupted + resumed on 2 ranks."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testkit.engine import QUIET, TinyTask, assert_same_weights, weights

import perceivers
from perceivers.training.checkpoint import latest_checkpoint
from perceivers.training.config import EngineConfig
from perceivers.training.loop import run_task

pytestmark = pytest.mark.usefixtures("one_thread")
WORKER = str(Path(__file__).resolve().parents[1] / "testkit" / "engine_worker.py")
CFG = EngineConfig(steps=24, batch_size=32, lr=3e-3, checkpoint_every=3, log_every=1)
ARGS = ["steps=24", "batch_size=32", "lr=3e-3", "checkpoint_every=3", "log_every=1", "dropout=0.1"]


def _env() -> dict[str, str]:
    root = str(Path(perceivers.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, WORKER, *args], env=_env(), capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("reference")
    run_task(TinyTask(dropout=0.1), CFG, out, **QUIET)
    return weights(out)


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, reference):
    kill_at = random.Random(6).randint(4, 22)  # a training-loss call, i.e. a step, chosen by a seeded draw
    killed = _worker(str(tmp_path / "run"), *ARGS, f"kill_at={kill_at}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "run" / "model").exists()
    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert last is not None and last.name == f"step-{(kill_at - 1) // 3 * 3:08d}"
    run_task(TinyTask(dropout=0.1), CFG, tmp_path / "run", resume=True, **QUIET)
    assert_same_weights(weights(tmp_path / "run"), reference)


def test_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, reference):
    killed = _worker(str(tmp_path / "run"), *ARGS, "kill_in_save=3")  # dies while writing step 9
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    root = tmp_path / "run" / "checkpoints"
    assert (root / ".tmp-step-00000009" / "model.safetensors").is_file()  # the half-written one, never renamed
    assert latest_checkpoint(root).name == "step-00000006"
    run_task(TinyTask(dropout=0.1), CFG, tmp_path / "run", resume=True, **QUIET)
    assert_same_weights(weights(tmp_path / "run"), reference)
    assert not list(root.glob(".tmp-*"))


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    # The per-tensor AdamW loop: its rounding does not depend on FSDP's sharding (the fused kernel's does).
    cfg = EngineConfig(steps=12, batch_size=32, lr=3e-3, eps=1e-5, log_every=1, fused_optimizer=False)
    args = ["steps=12", "batch_size=32", "lr=3e-3", "eps=1e-5", "log_every=1", "noise=0", "fused_optimizer=false"]
    # The environment torchrun gives its workers (RANK, WORLD_SIZE, MASTER_*), without the launcher's own start-up.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, WORKER, str(tmp_path / "two"), *args, "strategies=ddp,fsdp,fsdp:lamb,resume:ddp"],
                              env={**_env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
    finally:  # never leave a rank behind (e.g. waiting for a peer that failed)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # One process, the same 32-item global batches as 2 ranks x 16, accumulated over 2 micro-batches: exact.
    run_task(TinyTask(noise=0), dataclasses.replace(cfg, grad_accum=2), tmp_path / "accum2", **QUIET)
    for strategy in ("ddp", "fsdp"):
        assert_same_weights(weights(tmp_path / "two" / strategy), weights(tmp_path / "accum2"))
    # 2 ranks interrupted by Ctrl-C at step 7 and resumed end bit-identical (per-rank dropout and noise streams).
    resumed = tmp_path / "two" / "resume-ddp"
    assert_same_weights(weights(resumed / "resumed"), weights(resumed / "reference"))
    # LAMB's per-tensor trust ratio on FSDP shards uses the norms of whole tensors (a shard's own norm would be
    # off by ~1/sqrt(2)); only the order of the sums of squares differs.
    run_task(TinyTask(noise=0), dataclasses.replace(cfg, grad_accum=2, optimizer="lamb"), tmp_path / "lamb", **QUIET)
    a, b = weights(tmp_path / "two" / "fsdp-lamb"), weights(tmp_path / "lamb")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # One process, one 32-item batch per step: the same losses to 1e-5 and weights to 1e-4 (summation order only).
    run_task(TinyTask(noise=0), cfg, tmp_path / "one", **QUIET)
    a, b = weights(tmp_path / "two" / "ddp"), weights(tmp_path / "one")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    losses = [[float(r.split(",")[2]) for r in (tmp_path / d / "metrics.csv").read_text().splitlines()[1:]]
              for d in ("two/ddp", "one")]
    assert len(losses[0]) == 12 and losses[0] == pytest.approx(losses[1], rel=1e-5)
