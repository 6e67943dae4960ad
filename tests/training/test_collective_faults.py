"""A rank that dies or freezes under ``torchrun``: the other rank ends with one line (a ``CollectiveError``) instead
of a gloo traceback, after at most ``collective_timeout`` seconds for a frozen one. Two gloo processes with
torchrun's environment (as ``test_engine_processes.py``), rank 1 killed (SIGKILL) or stopped (SIGSTOP) at its 3rd
step."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import perceivers
from perceivers.core.errors import UserError
from perceivers.training.dist import (
    CollectiveError,
    collective_failure,
    is_collective_failure,
)

WORKER = str(Path(__file__).resolve().parents[1] / "testkit" / "engine_worker.py")
ARGS = ["steps=6", "batch_size=32", "strategy=ddp", "log_every=1", "hooks_rank=1"]


def _launch(out: Path, *args: str) -> list[subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = str(Path(perceivers.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [subprocess.Popen([sys.executable, WORKER, str(out), *ARGS, *args],
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in range(2)]


def test_a_killed_or_frozen_rank_ends_the_other_with_one_line(tmp_path):
    runs = {"killed": _launch(tmp_path / "killed", "kill_at=3"),
            "frozen": _launch(tmp_path / "frozen", "freeze_at=3", "collective_timeout=2")}
    try:
        outcome = {}
        for name, (rank0, _) in runs.items():
            _, err = rank0.communicate(timeout=90)
            outcome[name] = (rank0.returncode, err)
    finally:  # never leave a rank behind: the frozen one waits for SIGCONT forever
        for proc in (p for pair in runs.values() for p in pair):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert runs["killed"][1].returncode == -signal.SIGKILL
    for name, why in (("killed", "the connection to another process was lost"),
                      ("frozen", r"no answer from another process within collective_timeout=2 s")):
        code, err = outcome[name]
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-1].startswith(f"error: rank 0 of 2: a collective operation failed: {why}")


def test_collective_failures_are_recognised_and_short():
    timeout = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                           "3000ms for recv operation to complete")
    assert is_collective_failure(timeout) and not is_collective_failure(RuntimeError("shape mismatch"))
    error = collective_failure(timeout, 1, 4, 3.0)
    assert isinstance(error, CollectiveError) and isinstance(error, UserError) and isinstance(error, RuntimeError)
    assert str(error).startswith("rank 1 of 4: a collective operation failed: no answer from another process within "
                                 "collective_timeout=3 s")
    assert "\n" not in str(error) and "gloo" not in str(error)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf")])
def test_collective_timeout_is_checked(bad):
    from perceivers.training.config import EngineConfig

    with pytest.raises(ValueError, match="collective_timeout"):
        EngineConfig(collective_timeout=bad)
