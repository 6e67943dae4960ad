"""HiP vs flat Perceiver IO at growing input sizes: time and peak memory of inference and of one training step.

Both models reconstruct every input point from its learned position embedding (the masked-autoencoding setting
of the HiP paper), with the same embedding width and a comparable parameter budget:

- **HiP**: the ``hip-mini`` layout (16 groups -> 1 -> 16) at narrow widths: 128 latents per group x 64 channels
  (2 layers), a 256 x 256 processor (4 layers), a 128-latent 64-channel decoder block (1 layer);
- **flat Perceiver IO**: the HiP repository's Perceiver IO baseline (one group, ``ConcatenateGrouper``) with
  1,024 latents x 256 channels and 4 layers, the latent size of its ``c_50m`` baseline.

Each input has ``M`` points of 3 channels. Timings alternate the two models in one process (median of
``--repeats`` after a warm-up); peak memory is measured per configuration in a fresh subprocess: the
high-water resident set size during one call, above the RSS just before it (model, optimiser and inputs
already allocated; Linux ``/proc/self/clear_refs`` resets the high-water mark, ``ru_maxrss`` is the fallback).
A training step = forward, MSE on every point, backward, AdamW step (its first call allocates the AdamW
state, which the memory figure includes).

    python benchmarks/hip_scaling.py --threads 1                      # 16k .. 256k points
    python benchmarks/hip_scaling.py --sizes 4096,8192 --repeats 1    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

MODELS = ("hip", "perceiver-io")


def build(kind: str, points: int):
    from perceivers.models.hip.config import HiPConfig
    from perceivers.models.hip.model import HiP

    common = dict(modalities={"points": (points, 3)}, num_embedding_channels=32, num_position_encoding_channels=None,
                  self_attend_widening_factor=4, cross_attend_widening_factor=1)
    if kind == "hip":
        cfg = HiPConfig(num_groups=(16, 1, 16), num_self_attend_layers=(2, 4, 1), num_latents=(128, 256, 128),
                        num_channels=(64, 256, 64), num_self_attend_heads=(4, 8, 4), num_cross_attend_heads=(1, 1, 1),
                        **common)
    elif kind == "perceiver-io":
        cfg = HiPConfig(num_groups=(1,), num_self_attend_layers=(4,), num_latents=(1024,), num_channels=(256,),
                        num_self_attend_heads=(8,), num_cross_attend_heads=(1,), **common)
    else:
        raise ValueError(f"unknown model {kind!r}: expected one of {MODELS}")
    return HiP(cfg)


def make_step(model, x: torch.Tensor, mode: str):
    """A callable running one inference forward or one training step on ``x: (B, M, 3)``."""
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model({"points": x})
        return infer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> None:
        out = model({"points": x})["input_reconstruction"]["points"]
        loss = (out - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return train


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak RSS (VmHWM)
        return True
    except OSError:
        return False


def _peak_bytes(reset: bool) -> int:
    if reset:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_memory(kind: str, points: int, batch: int, mode: str) -> dict:
    """Child process: peak RSS growth (bytes) during one call."""
    torch.manual_seed(0)
    model = build(kind, points)
    x = torch.rand(batch, points, 3)
    step = make_step(model, x, mode)
    before = _rss_bytes()
    reset = _reset_peak()
    step()
    peak = _peak_bytes(reset)
    return {"peak_bytes": max(peak - before, 0), "process_peak_bytes": peak, "reset": reset,
            "params": sum(p.numel() for p in model.parameters())}


def memory_in_subprocess(kind: str, points: int, batch: int, mode: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(points), str(batch), mode, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_pair(points: int, batch: int, mode: str, repeats: int) -> dict[str, float]:
    """Median seconds per call of both models, alternating, in this process."""
    torch.manual_seed(0)
    x = torch.rand(batch, points, 3)
    steps = {k: make_step(build(k, points), x, mode) for k in MODELS}
    for step in steps.values():
        step()  # warm-up (and AdamW state)
    times: dict[str, list[float]] = {k: [] for k in MODELS}
    for _ in range(repeats):
        for kind, step in steps.items():
            start = time.perf_counter()
            step()
            times[kind].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16384,32768,65536,131072,262144", help="comma-separated input points")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", default="inference,train")
    p.add_argument("--child", nargs=4, metavar=("MODEL", "POINTS", "BATCH", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        kind, points, batch, mode = args.child
        print(json.dumps(measure_memory(kind, int(points), int(batch), mode)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    params = {k: sum(p.numel() for p in build(k, 16).parameters()) - 16 * 32 for k in MODELS}
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, float32 CPU; parameters "
          f"without the M x 32 position table: HiP {params['hip']:,}, Perceiver IO {params['perceiver-io']:,}")
    print("| points | mode | HiP s | Perceiver IO s | IO / HiP time | HiP peak MiB | IO peak MiB | IO / HiP memory |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for points in sizes:
        for mode in args.modes.split(","):
            t = time_pair(points, args.batch, mode, args.repeats)
            mem = {k: memory_in_subprocess(k, points, args.batch, mode, args.threads) for k in MODELS}
            mib = {k: mem[k].get("peak_bytes", float("nan")) / 2**20 for k in MODELS}
            row = {"points": points, "mode": mode, "time_s": t, "peak_mib": mib, "memory": mem}
            rows.append(row)
            print(f"| {points:,} | {mode} | {t['hip']:.3f} | {t['perceiver-io']:.3f} | "
                  f"{t['perceiver-io'] / t['hip']:.2f}x | {mib['hip']:.0f} | {mib['perceiver-io']:.0f} | "
                  f"{mib['perceiver-io'] / mib['hip']:.2f}x |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
