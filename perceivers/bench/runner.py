"""Run the bench: measure the matmul peaks, then every case in its own worker process.

:class:`BenchSettings` holds what ``perceivers bench`` was asked for; :func:`run_bench` returns the results dict
that :mod:`perceivers.bench.report` turns into the table, JSON and PNG::

    {"settings": {...}, "machine": {"cpu": ..., "threads": ...}, "peaks": {"fp32": GFLOP/s, "bf16": GFLOP/s,
     "n": 2048, "fast_bf16": bool, "start": {...}, "end": {...}}, "cases": [worker result, ...]}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from perceivers.bench.peers import ALL_IMPLS, IMPLS
from perceivers.bench.worker import MODES, PRECISIONS
from perceivers.core.validation import ConfigBase, check_choice, check_int, fail

#: M values of the default run and of ``--quick``.
DEFAULT_MS = (1024, 4096, 16384, 65536)
QUICK_MS = (1024, 4096)
#: bf16 counts as fast when its matmul peak is at least this multiple of fp32's.
FAST_BF16 = 1.5
#: ``--malloc``: the environment each worker gets on top of ours. ``default`` is the inherited environment (glibc's
#: malloc as configured, or whatever ``LD_PRELOAD`` brings); ``kept`` tells glibc to serve every allocation from its
#: heap and never give freed memory back to the system (no ``mmap`` per large buffer, no trimming), so large
#: buffers freed by one step are reused by the next without page faults. Other C libraries ignore these variables.
MALLOC_ENVS: dict[str, dict[str, str]] = {
    "default": {},
    "kept": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**46)},
}
MALLOCS = tuple(MALLOC_ENVS)


@dataclass(frozen=True, kw_only=True)
class BenchSettings(ConfigBase):
    """What to run: input lengths ``ms``, implementations, modes, precisions (each case runs in every one, so one run
    compares our bf16 with our fp32), allocator settings ``mallocs`` (:data:`MALLOC_ENVS`; likewise), CPU threads
    (``None``: torch's choice),
    timed ``repeats`` after ``warmup`` steps, ``rounds`` passes over every case (each case keeps its fastest
    round: on a shared machine, other work only ever adds time), batch sizes, the spec size (``bench`` or ``tiny``), the matmul size
    of the peak measurement, the device and a per-case timeout in seconds."""

    ms: tuple[int, ...] = DEFAULT_MS
    impls: tuple[str, ...] = IMPLS
    modes: tuple[str, ...] = MODES
    precisions: tuple[str, ...] = ("fp32",)
    mallocs: tuple[str, ...] = ("default",)
    threads: int | None = None
    repeats: int = 3
    warmup: int = 1
    rounds: int = 1
    batch_train: int = 8
    batch_infer: int = 32
    size: str = "bench"
    peak_n: int = 2048
    device: str = "cpu"
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        for name, values, choices in (("impls", self.impls, ALL_IMPLS), ("modes", self.modes, MODES),
                                      ("precisions", self.precisions, PRECISIONS), ("mallocs", self.mallocs, MALLOCS)):
            if not values:
                fail(name, values, f"at least one of {choices}")
            for value in values:
                check_choice(name, value, choices)
        if not self.ms:
            fail("ms", self.ms, "at least one input length")
        for m in self.ms:
            check_int("m", m)
        check_choice("size", self.size, ("bench", "tiny"))
        if self.threads is not None:
            check_int("threads", self.threads)
        for name in ("repeats", "rounds", "batch_train", "batch_infer", "peak_n", "timeout_s"):
            check_int(name, getattr(self, name))
        check_int("warmup", self.warmup, minimum=0)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchSettings:
        """``--quick``: M = 1k and 4k, 2 timed repeats after 1 warm-up, a 1024^3 peak matmul."""
        return cls(**{"ms": QUICK_MS, "repeats": 2, "warmup": 1, "peak_n": 1024, **overrides})


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak(n: int, dtype: torch.dtype, device: str = "cpu", repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` ``n x n @ n x n`` products (``2 n^3`` FLOPs) after one warm-up."""
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev).to(dtype), torch.randn(n, n, device=dev).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure_peaks(settings: BenchSettings) -> dict[str, Any]:
    """fp32 and bf16 matmul peaks (GFLOP/s) with the bench's threads, and whether bf16 is fast (>= 1.5x fp32)."""
    previous = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        fp32 = matmul_peak(settings.peak_n, torch.float32, settings.device)
        bf16 = matmul_peak(settings.peak_n, torch.bfloat16, settings.device)
    finally:
        torch.set_num_threads(previous)
    return {"n": settings.peak_n, "fp32": fp32, "bf16": bf16, "fast_bf16": bf16 >= FAST_BF16 * fp32}


def cases(settings: BenchSettings) -> list[dict[str, Any]]:
    """Every (M, mode, precision, malloc, impl) in table order."""
    return [{"m": m, "mode": mode, "precision": precision, "malloc": malloc, "impl": impl} for m in settings.ms
            for mode in settings.modes for precision in settings.precisions for malloc in settings.mallocs
            for impl in settings.impls]


def worker_argv(settings: BenchSettings, case: dict[str, Any]) -> list[str]:
    """The command line of one case's worker process."""
    batch = settings.batch_train if case["mode"] == "train" else settings.batch_infer
    return [sys.executable, "-m", "perceivers.bench.worker", "--impl", case["impl"], "--mode", case["mode"],
            "--m", str(case["m"]), "--batch", str(batch), "--repeats", str(settings.repeats),
            "--warmup", str(settings.warmup), "--precision", case.get("precision", "fp32"),
            "--threads", str(settings.threads or 0), "--size", settings.size, "--device", settings.device]


def run_worker(argv: list[str], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one worker; its JSON result, or ``{"error": ...}`` with the last line of its stderr (a crash, an
    out-of-memory kill, a timeout)."""
    try:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return {"error": f"exit status {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def run_bench(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Peaks, then every case in its own process; ``progress`` gets one line per case."""
    say = progress or (lambda line: None)
    peaks = measure_peaks(settings)
    say(f"matmul peak ({settings.peak_n}^3): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
        + ("" if peaks["fast_bf16"] else f" (no fast bf16 here: bf16 < {FAST_BF16}x fp32)"))
    todo = cases(settings)
    rounds: list[list[dict[str, Any]]] = [[] for _ in todo]
    for r in range(settings.rounds):
        for i, case in enumerate(todo):
            start = time.perf_counter()
            result = {**case, **run_worker(worker_argv(settings, case), settings.timeout_s,
                                           MALLOC_ENVS[case["malloc"]])}
            rounds[i].append(result)
            where = f"round {r + 1}/{settings.rounds} " if settings.rounds > 1 else ""
            malloc = "" if case["malloc"] == "default" else f" {case['malloc']}-malloc"
            say(f"[{where}{i + 1}/{len(todo)}] M={case['m']} {case['mode']} {case['precision']}{malloc} "
                f"{case['impl']}: "
                f"{describe(result)} "
                f"({time.perf_counter() - start:.0f} s)")
    results = [best_round(tries) for tries in rounds]
    peaks = higher_peaks(peaks, measure_peaks(settings))  # again at the end: a busy moment only lowers a peak
    machine = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": settings.threads or torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "device": settings.device}
    return {"settings": settings.to_dict(), "machine": machine, "peaks": peaks, "cases": results,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def higher_peaks(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The higher of two peak measurements per precision (both kept under ``start`` / ``end``)."""
    fp32, bf16 = max(start["fp32"], end["fp32"]), max(start["bf16"], end["bf16"])
    return {"n": start["n"], "fp32": fp32, "bf16": bf16, "fast_bf16": bf16 >= FAST_BF16 * fp32,
            "start": {k: start[k] for k in ("fp32", "bf16")}, "end": {k: end[k] for k in ("fp32", "bf16")}}


def best_round(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the lowest median time (the first try when none succeeded), with every round's median."""
    timed = [t for t in tries if "median_s" in t]
    if not timed:
        return tries[0]
    best = min(timed, key=lambda t: t["median_s"])
    return {**best, "round_medians_s": [t["median_s"] for t in timed]} if len(tries) > 1 else best


def describe(result: dict[str, Any]) -> str:
    """A case's outcome in a few words."""
    if "unavailable" in result:
        return "unavailable"
    if "error" in result:
        return f"failed ({result['error']})"
    return f"{result['median_s']:.3f} s, peak RSS {result['peak_rss_mib']:.0f} MiB"


def run_ar_bench(size: str, impls: tuple[str, ...], threads: int | None, rounds: int = 1, timeout_s: int = 1800,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``perceivers bench --ar``: every implementation of :mod:`perceivers.bench.ar` in its own process, ``rounds``
    times in turn; each keeps its fastest round (highest tokens/s, prompt pass included)."""
    from perceivers.bench.ar import AR_IMPLS, AR_SPECS

    check_choice("size", size, tuple(AR_SPECS))
    for impl in impls:
        check_choice("impls", impl, AR_IMPLS)
    say = progress or (lambda line: None)
    tries: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for r in range(rounds):
        for impl in impls:
            start = time.perf_counter()
            argv = [sys.executable, "-m", "perceivers.bench.ar", "--impl", impl, "--size", size,
                    "--threads", str(threads or 0)]
            result = {"impl": impl, **run_worker(argv, timeout_s)}
            tries[impl].append(result)
            text = (f"{result['tokens_per_s']:.1f} tokens/s ({result['decode_tokens_per_s']:.1f} decoding)"
                    if "tokens_per_s" in result else describe(result))
            say(f"[round {r + 1}/{rounds}] AR {impl}: {text} ({time.perf_counter() - start:.0f} s)")
    cases = []
    for impl, results in tries.items():
        timed = [t for t in results if "tokens_per_s" in t]
        cases.append(max(timed, key=lambda t: t["tokens_per_s"]) if timed else results[0])
    machine = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": threads or torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "device": "cpu"}
    return {"kind": "ar", "settings": {"size": size, "impls": list(impls), "rounds": rounds, **AR_SPECS[size].to_dict()},
            "machine": machine, "cases": cases, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
