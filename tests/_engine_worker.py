"""Run :class:`TinyTask` on the engine from the command line (for torchrun and kill tests).

``python tests/_engine_worker.py OUT [key=value ...]``: ``kill_at`` / ``interrupt_at`` / ``nan_at`` / ``noise`` /
``dropout`` go to the task, everything else to :class:`EngineConfig`; ``resume=1`` resumes.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _engine_tasks import TinyTask  # noqa: E402

from perceivers.training.engine import EngineConfig, run_task  # noqa: E402
from perceivers.training.overrides import _parse  # noqa: E402

TASK_KEYS = {"kill_at": int, "interrupt_at": int, "nan_at": int, "noise": float, "dropout": float}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    out, pairs = argv[0], dict(a.split("=", 1) for a in argv[1:])
    resume = pairs.pop("resume", "0") == "1"
    task = TinyTask(**{k: TASK_KEYS[k](pairs.pop(k)) for k in list(pairs) if k in TASK_KEYS})
    hints = typing.get_type_hints(EngineConfig)
    cfg = EngineConfig(**{k: _parse(v, hints[k], k) for k, v in pairs.items()})
    result = run_task(task, cfg, out, resume=resume, progress=False, log=lambda *a: None)
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
