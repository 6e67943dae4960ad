"""Run :class:`TinyTask` on the engine from the command line (for torchrun and kill tests).

``python tests/testkit/engine_worker.py OUT [key=value ...]``: ``kill_at`` / ``interrupt_at`` / ``freeze_at`` /
``nan_at`` / ``noise`` / ``dropout`` go to the task, everything else to :class:`EngineConfig`; ``resume=1`` resumes;
``hooks_rank=R`` applies the ``*_at`` hooks on rank ``R`` only; a :class:`~perceivers.core.errors.UserError` is one
line on stderr and exit status 2, as on the command line;
``kill_in_save=N``
SIGKILLs the process in the middle of its N-th checkpoint save; ``strategies=ddp,fsdp:lamb`` runs one after the
other in one process group, into ``OUT/ddp`` and ``OUT/fsdp-lamb`` (``strategy:optimizer``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import typing
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for testkit

from perceivers.core.errors import UserError
from perceivers.training.config import EngineConfig
from perceivers.training.loop import run_task
from perceivers.training.overrides import parse_value
from testkit.engine import TinyTask

TASK_KEYS = {"kill_at": int, "interrupt_at": int, "freeze_at": int, "nan_at": int, "noise": float, "dropout": float}


def kill_during_save(n: int) -> None:
    """SIGKILL this process while the n-th checkpoint is half written (weights done, optimizer not)."""
    import perceivers.training.checkpoint as ckpt

    original, count = ckpt.atomic_write, [0]

    def write(path, writer):
        if Path(path).name == "optimizer.pt":
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(path, writer)

    ckpt.atomic_write = write


def resume_check(cfg: EngineConfig, out: Path) -> None:
    """With dropout and noise (per-rank RNG streams): an uninterrupted run into ``out/reference``; a run that every
    rank interrupts (SIGINT) at its 7th step, then resumed, into ``out/resumed``."""
    quiet = {"progress": False, "log": lambda *a: None}
    run_task(TinyTask(dropout=0.1), cfg, out / "reference", **quiet)
    assert run_task(TinyTask(dropout=0.1, interrupt_at=7), cfg, out / "resumed", **quiet)["interrupted"]
    run_task(TinyTask(dropout=0.1), cfg, out / "resumed", resume=True, **quiet)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    out, pairs = argv[0], dict(a.split("=", 1) for a in argv[1:])
    resume = pairs.pop("resume", "0") == "1"
    if "kill_in_save" in pairs:
        kill_during_save(int(pairs.pop("kill_in_save")))
    task_args = {k: TASK_KEYS[k](pairs.pop(k)) for k in list(pairs) if k in TASK_KEYS}
    if pairs.pop("hooks_rank", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        task_args = {k: v for k, v in task_args.items() if not k.endswith("_at")}  # the hooks act on that rank only
    strategies = pairs.pop("strategies", "").split(",") if "strategies" in pairs else []
    hints = typing.get_type_hints(EngineConfig)
    cfg = EngineConfig(**{k: parse_value(v, hints[k], k) for k, v in pairs.items()})
    if not strategies:
        try:
            result = run_task(TinyTask(**task_args), cfg, out, resume=resume, progress=False, log=lambda *a: None)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 130 if result.get("interrupted") else 0
    dist.init_process_group("gloo")
    for spec in strategies:  # "fsdp" or "fsdp:lamb" (strategy:optimizer), "resume:ddp" (see resume_check)
        if spec.startswith("resume:"):
            resume_check(dataclasses.replace(cfg, strategy=spec[7:]), Path(out) / spec.replace(":", "-"))
            continue
        strategy, _, optimizer = spec.partition(":")
        run_cfg = dataclasses.replace(cfg, strategy=strategy, optimizer=optimizer or cfg.optimizer)
        run_task(TinyTask(**task_args), run_cfg, Path(out) / spec.replace(":", "-"), progress=False,
                 log=lambda *a: None)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
