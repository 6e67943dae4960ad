"""``perceivers bench``: our Perceiver IO classifier against the PyTorch peers (see :mod:`perceivers.bench`).

Every flag value is checked here before anything runs, so a mistake is one line (``perceivers bench: error:
...``, exit status 2), and ``--out`` is created first, so a bad folder fails before minutes of measuring.
"""

from __future__ import annotations

import argparse
import sys

from perceivers.cli.common import user_input
from perceivers.core.validation import check_choice, check_int, fail


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="speed and memory of our Perceiver IO against transformers, lucidrains and krasserm",
        description="Train steps (forward + backward + AdamW) and inference of the bench classifier (M inputs x 64 "
                    "channels, 256 x 512 latents, 1 cross-attend + 6 self-attends, 21.9 M parameters) for ours and "
                    "the installed peers (pip install 'perceivers[bench]'), each case in its own process: median "
                    "time, ratio to ours, %% of the measured matmul peak, peak RSS. Writes bench.json, bench.md and "
                    "bench.png (needs matplotlib) to --out. See docs/performance.md.",
        allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="M = 1k, 4k, 2 repeats, 1024^3 peak matmul (a few minutes)")
    p.add_argument("--m", default=None, metavar="M[,M...]",
                   help="input lengths, e.g. 1024,4096 or 1k,4k (default 1k,4k,16k,64k; --quick 1k,4k)")
    p.add_argument("--impls", default=None, metavar="NAME[,NAME...]",
                   help="implementations (default: all: ours, transformers, lucidrains, krasserm; also ours-gelu: "
                        "ours with the exact GELU of transformers and krasserm; with --ar: ours, krasserm, "
                        "lucidrains, ours-bf16)")
    p.add_argument("--ar", action="store_true",
                   help="Perceiver AR greedy generation instead: tokens/s after a 4,096-token prompt (--quick: 1,024), "
                        "ours vs krasserm (cached, perceiver-io 0.11) and lucidrains perceiver-ar-pytorch (no cache); "
                        "takes --quick, --impls, --threads, --rounds, --timeout and --out")
    p.add_argument("--modes", default="train,infer", metavar="MODE[,MODE]", help="train and/or infer (default both)")
    p.add_argument("--precision", default="fp32", metavar="P[,P...]",
                   help="fp32 (default), bf16 (torch.autocast for everyone, fp32 weights) and/or bf16-weights "
                        "(inference with the model in bf16); several, e.g. fp32,bf16, run every case in each")
    p.add_argument("--malloc", default="default", metavar="A[,A]",
                   help="default (the inherited environment) and/or kept (glibc keeps freed memory: no mmap per large "
                        "buffer, no trimming); both, default,kept, runs every case under each and reports the "
                        "default allocator's slowdown")
    p.add_argument("--threads", default=None, help="torch CPU threads per case (default: torch's choice)")
    p.add_argument("--repeats", default=None, help="timed steps per case (default 3; --quick 2)")
    p.add_argument("--warmup", default="1", help="untimed steps first (default 1)")
    p.add_argument("--rounds", default="1", help="passes over all cases; each keeps its fastest (default 1)")
    p.add_argument("--batch-train", default="8", help="training batch (default 8)")
    p.add_argument("--batch-infer", default="32", help="inference batch (default 32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--timeout", default="1800", help="seconds allowed per case (default 1800)")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")


def parse_int(flag: str, text: str, *, minimum: int = 1) -> int:
    """``text`` as an int (a ``k`` suffix multiplies by 1024), at least ``minimum``; else a ConfigError naming
    ``flag``."""
    raw = text.strip().lower()
    scale = 1024 if raw.endswith("k") else 1
    try:
        value = int(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        fail(flag, text, f"an integer >= {minimum}" + (" (a k suffix means x1024)" if flag == "--m" else ""))
    check_int(flag, value, minimum=minimum)
    return value


def parse_list(flag: str, text: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of ``choices``, in the order given, without repeats."""
    items = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not items:
        fail(flag, text, f"a comma-separated list of {', '.join(choices)}")
    for item in items:
        check_choice(flag, item, choices)
    return items


def settings_from_args(args: argparse.Namespace):
    """:class:`~perceivers.bench.runner.BenchSettings` from the command line (ConfigError on a bad value)."""
    import torch

    from perceivers.bench.peers import ALL_IMPLS, IMPLS
    from perceivers.bench.runner import MALLOCS, BenchSettings
    from perceivers.bench.worker import MODES, PRECISIONS

    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or (device.type == "cuda" and not torch.cuda.is_available()):
        fail("--device", args.device, "cpu, or cuda on a machine with a CUDA device")
    values = {"impls": parse_list("--impls", args.impls or ",".join(IMPLS), ALL_IMPLS), "modes": parse_list("--modes", args.modes, MODES),
              "precisions": parse_list("--precision", args.precision, PRECISIONS), "warmup": parse_int("--warmup", args.warmup, minimum=0),
              "mallocs": parse_list("--malloc", args.malloc, MALLOCS), "rounds": parse_int("--rounds", args.rounds),
              "batch_train": parse_int("--batch-train", args.batch_train),
              "batch_infer": parse_int("--batch-infer", args.batch_infer),
              "timeout_s": parse_int("--timeout", args.timeout), "device": args.device}
    if args.m is not None:
        ms = tuple(dict.fromkeys(parse_int("--m", t) for t in args.m.split(",") if t.strip()))
        if not ms:
            fail("--m", args.m, "a comma-separated list of input lengths")
        values["ms"] = ms
    if args.threads is not None:
        values["threads"] = parse_int("--threads", args.threads)
    if args.repeats is not None:
        values["repeats"] = parse_int("--repeats", args.repeats)
    return BenchSettings.quick(**values) if args.quick else BenchSettings(**values)


def progress(line: str) -> None:
    print(line, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from perceivers.bench.report import format_table, write_outputs
    from perceivers.bench.runner import run_bench

    if args.ar:
        return cmd_bench_ar(args)
    settings = settings_from_args(args)
    with user_input("--out"):
        Path(args.out).mkdir(parents=True, exist_ok=True)

    results = run_bench(settings, progress)
    print()
    print(format_table(results), end="")
    written = write_outputs(results, args.out)
    print(f"wrote {written['json']} and {written['markdown']}", flush=True)
    if written["png"] is None:
        print("no PNG: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    else:
        print(f"wrote {written['png']}")
    return 0


def cmd_bench_ar(args: argparse.Namespace) -> int:
    """``perceivers bench --ar``: the generation bench of :mod:`perceivers.bench.ar`."""
    from pathlib import Path

    from perceivers.bench.ar import AR_IMPLS
    from perceivers.bench.report import format_ar_table, write_ar_outputs
    from perceivers.bench.runner import run_ar_bench

    impls = parse_list("--impls", args.impls or ",".join(AR_IMPLS), AR_IMPLS)
    threads = None if args.threads is None else parse_int("--threads", args.threads)
    rounds, timeout = parse_int("--rounds", args.rounds), parse_int("--timeout", args.timeout)
    with user_input("--out"):
        Path(args.out).mkdir(parents=True, exist_ok=True)
    results = run_ar_bench("quick" if args.quick else "bench", impls, threads, rounds, timeout, progress)
    print()
    print(format_ar_table(results), end="")
    written = write_ar_outputs(results, args.out)
    print(f"wrote {written['json']} and {written['markdown']}", flush=True)
    return 0
