"""Scaling of the training engine from 1 to 2 processes on this machine (CPU, gloo, one thread per process).

Runs ``perceivers train RECIPE`` at the same global batch with 1 process (strategy none), then 2 processes under
torchrun (DDP, then FSDP2), alternating the settings ``--repeats`` times, and reports the training throughput
(examples/s of the training loop, from ``metrics.json``; start-up, evaluation and saving excluded) and the
speed-up over one process, as a ratio of the medians.

Run: ``python benchmarks/engine_scaling.py --steps 200``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(nproc: int, strategy: str, args: argparse.Namespace, out: Path) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    command = [*(launcher if nproc > 1 else [sys.executable]), "-m", "perceivers", "train", args.recipe,
               "--out", str(out), "--no-progress", "--threads", "1", "--strategy", strategy,
               "--steps", str(args.steps), "--batch_size", str(args.batch_size), "--checkpoint_every", "0",
               "--eval_every", "0", "--log_every", str(args.steps)]
    subprocess.run(command, check=True, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                                                                               **dict(__import__("os").environ)})
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="digits")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    settings = [(1, "none"), (2, "ddp"), (2, "fsdp")]
    rates: dict[tuple[int, str], list[float]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for nproc, strategy in settings:
                m = run(nproc, strategy, args, Path(tmp) / f"{nproc}-{strategy}-{r}")
                rates[(nproc, strategy)].append(m["examples_per_s"])
                print(f"repeat {r}: {nproc} x {strategy}: {m['examples_per_s']:.1f} examples/s "
                      f"({m['train_seconds']:.1f} s for {m['steps']} steps)", flush=True)
    base = statistics.median(rates[(1, "none")])
    print(f"\n| processes | strategy | examples/s (median of {args.repeats}) | speed-up |")
    print("|---:|---|---:|---:|")
    for nproc, strategy in settings:
        median = statistics.median(rates[(nproc, strategy)])
        print(f"| {nproc} | {strategy} | {median:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
