"""One bench case in its own process, so that its peak memory is its own.

    python -m perceivers.bench.worker --impl ours --mode train --m 4096 --batch 8 --repeats 3 --warmup 1

Builds the implementation (:func:`perceivers.bench.peers.build`), runs ``warmup`` untimed then ``repeats`` timed
steps and prints one JSON object on the last line of stdout: ``impl``, ``mode``, ``m``, ``batch``, ``params``,
``times_s``, ``median_s``, ``flops`` (:func:`~perceivers.bench.spec.matmul_flops` of the implementation),
``peak_rss_mib`` (the process's resident-set high-water mark: ``VmHWM``), ``base_rss_mib`` (resident set after
building the model and inputs, before the first step), ``peak_cuda_mib`` on CUDA (``max_memory_allocated``) and
``notes``; or ``{"impl": ..., "unavailable": reason}`` when the peer is not installed or does not run here.

A training step is forward, cross-entropy on random labels, backward and an AdamW step (``zero_grad`` to None), the
same fused AdamW for every implementation (:func:`perceivers.core.optim.adamw`, as the training engine uses);
inference is a forward under ``torch.inference_mode`` in eval mode. ``--precision bf16`` runs the forward (and
loss) under ``torch.autocast(device, torch.bfloat16)`` with fp32 weights, for every implementation alike;
``--precision bf16-weights`` (inference only) casts the model and the inputs to bf16 and runs without autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from typing import Any

import torch

from perceivers.bench.peers import ALL_IMPLS, PeerUnavailable, build
from perceivers.bench.spec import SPECS, matmul_flops
from perceivers.core.optim import adamw

MODES = ("train", "infer")
PRECISIONS = ("fp32", "bf16", "bf16-weights")


def rss_mib(field: str = "VmRSS") -> float:
    """``field`` of ``/proc/self/status`` in MiB (Linux); elsewhere the peak from ``getrusage``."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, time; the result dict described in the module docstring."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = SPECS[args.size]()
    result: dict[str, Any] = {"impl": args.impl, "mode": args.mode, "m": args.m, "batch": args.batch,
                              "precision": args.precision, "threads": torch.get_num_threads(), "size": args.size}
    training = args.mode == "train"
    if training and args.precision == "bf16-weights":
        return {**result, "unavailable": "bf16-weights is inference only (training keeps fp32 weights: bf16)"}
    try:
        model, forward, flop_options, notes = build(args.impl, spec)
    except PeerUnavailable as exc:
        return {**result, "unavailable": str(exc)}
    dtype = torch.bfloat16 if args.precision == "bf16-weights" else torch.float32
    model = model.to(device=device, dtype=dtype)
    model.train(training)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["flops"] = matmul_flops(spec, args.m, args.batch, training=training, **flop_options)
    result["notes"] = notes
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.m, spec.input_channels, generator=gen).to(device=device, dtype=dtype)
    labels = torch.randint(0, spec.num_classes, (args.batch,), generator=gen).to(device)
    optimizer = adamw(model.parameters(), lr=1e-4) if training else None
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def step() -> None:
        if training:
            with autocast:
                loss = torch.nn.functional.cross_entropy(forward(x).float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast:
                forward(x)

    result["base_rss_mib"] = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    result.update(times_s=times, median_s=statistics.median(times), peak_rss_mib=rss_mib("VmHWM"))
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perceivers.bench.worker", description=__doc__.split("\n")[0])
    p.add_argument("--impl", required=True, choices=ALL_IMPLS)
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--m", type=int, required=True, help="inputs per example")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--size", choices=sorted(SPECS), default="bench")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(json.dumps(run_case(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
