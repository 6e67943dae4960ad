"""The bench's outputs: a markdown table (:func:`format_table`), ``bench.json``, ``bench.md`` and ``bench.png``.

Per M, mode and precision, each implementation's median time, its ratio to ours at the same precision (their
time / our time: > 1 means we are faster), achieved GFLOP/s of its analytic matmul FLOPs
(:func:`~perceivers.bench.spec.matmul_flops`) as a percentage of the measured matmul peak of its precision (bf16's
for both bf16 modes), its peak RSS and the ratio of that to ours (theirs / ours: > 1 means we use less), and its
speed-up over our fp32 case of the same run (our fp32 time / its time). A run with ``--malloc default,kept`` shows
each case under both allocator settings (``kept`` marked in the precision cell) and, per case, how much slower the
default allocator is (:func:`malloc_rows`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceivers.core.files import atomic_write, write_json


def settings_precisions(settings: dict[str, Any]) -> tuple[str, ...]:
    """The precisions of a run (``precisions``; older results hold one ``precision``)."""
    return tuple(settings.get("precisions") or (settings.get("precision", "fp32"),))


def case_precision(case: dict[str, Any], settings: dict[str, Any]) -> str:
    return case.get("precision") or settings_precisions(settings)[0]


Key = tuple[int, str, str, str, str]  # M, mode, precision, malloc, impl


def _by_key(cases: list[dict[str, Any]], settings: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(c["m"], c["mode"], case_precision(c, settings), c.get("malloc", "default"), c["impl"]): c for c in cases}


def _ok(case: dict[str, Any] | None) -> bool:
    return case is not None and "median_s" in case


def ratio(theirs: float | None, ours: float | None) -> float | None:
    """``theirs / ours``, or None when either is missing or ours is not positive."""
    if theirs is None or ours is None or ours <= 0:
        return None
    return theirs / ours


def percent_of_peak(flops: int, seconds: float, peak_gflops: float) -> float:
    """Achieved ``flops / seconds`` as a percentage of ``peak_gflops`` (GFLOP/s)."""
    return 100.0 * flops / seconds / 1e9 / peak_gflops


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row of cells per case, in the order of ``results['cases']``."""
    settings = results["settings"]
    cases = results["cases"]
    index = _by_key(cases, settings)
    rows = []
    for case in cases:
        precision, malloc = case_precision(case, settings), case.get("malloc", "default")
        ours = index.get((case["m"], case["mode"], precision, malloc, "ours"))
        ours_fp32 = index.get((case["m"], case["mode"], "fp32", malloc, "ours"))
        shown = precision if malloc == "default" else f"{precision}, {malloc} malloc"
        head = [f"{case['m']:,}", case["mode"], shown, case["impl"]]
        if "unavailable" in case or "error" in case:
            reason = case.get("unavailable") or f"failed: {case['error']}"
            rows.append(head + [reason.replace("|", "/")] + ["—"] * 7)
            continue
        params = f"{case['params']:,}"
        if _ok(ours) and case["params"] != ours["params"]:
            params += f" ({case['params'] - ours['params']:+,})"
        time_ratio = ratio(case["median_s"], ours["median_s"]) if _ok(ours) else None
        rss_ratio = ratio(case["peak_rss_mib"], ours["peak_rss_mib"]) if _ok(ours) else None
        speedup = ratio(ours_fp32["median_s"], case["median_s"]) if _ok(ours_fp32) else None
        gflops = case["flops"] / case["median_s"] / 1e9
        peak = results["peaks"]["fp32" if precision == "fp32" else "bf16"]
        rows.append(head + [params, f"{case['median_s']:.3f}", _fmt(time_ratio, ".2f", "x"), f"{gflops:.0f}",
                            f"{percent_of_peak(case['flops'], case['median_s'], peak):.0f} %",
                            f"{case['peak_rss_mib']:,.0f}", _fmt(rss_ratio, ".2f", "x"), _fmt(speedup, ".2f", "x")])
    return rows


def format_table(results: dict[str, Any]) -> str:
    """The markdown report: machine and peaks, then the table."""
    peaks, machine, settings = results["peaks"], results["machine"], results["settings"]
    precisions = ", ".join(settings_precisions(settings))
    lines = [(f"Machine: {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, "
              f"device {machine['device']}; {results.get('date', '')}."),
             f"Matmul peak ({peaks['n']}^3, best at the start or the end): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
             + ("." if peaks["fast_bf16"] else " (no fast bf16 on this CPU: bf16 peak < 1.5x fp32)."),
             (f"Precision {precisions} (bf16: autocast, fp32 weights; bf16-weights: model and inputs in bf16, "
              f"inference); batch {settings['batch_train']} train / {settings['batch_infer']} inference; "
              f"median of {settings['repeats']} after {settings['warmup']} warm-up"
              + (f", fastest of {settings['rounds']} rounds" if settings.get("rounds", 1) > 1 else "")
              + "; each case in its own process."),
             ("Ratio = their time / ours at the same precision (> 1: we are faster); mem ratio = their peak RSS / ours "
              "(> 1: we use less); % peak: of the matmul peak of the case's precision; x our fp32 = our fp32 time / "
              "this time (same M and mode)."),
             "",
             ("| M | mode | precision | impl | params | time (s) | ratio | GFLOP/s | % peak | peak RSS (MiB) "
              "| mem ratio | x our fp32 |"),
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    slowdowns = malloc_rows(results)
    if slowdowns:
        lines += ["", ("Allocator: default time / kept time (> 1: the default allocator is slower; kept = glibc serves "
                       "every allocation from its heap and keeps freed memory)."), "",
                  "| M | mode | precision | impl | default (s) | kept (s) | default / kept |",
                  "|---:|---|---|---|---:|---:|---:|"]
        lines += ["| " + " | ".join(row) + " |" for row in slowdowns]
    return "\n".join(lines) + "\n"


def malloc_rows(results: dict[str, Any]) -> list[list[str]]:
    """Per case measured under both allocator settings: its default and kept times and their ratio."""
    settings = results["settings"]
    index = _by_key(results["cases"], settings)
    rows = []
    for (m, mode, precision, malloc, impl), case in index.items():
        kept = index.get((m, mode, precision, "kept", impl))
        if malloc == "default" and _ok(case) and _ok(kept):
            rows.append([f"{m:,}", mode, precision, impl, f"{case['median_s']:.3f}", f"{kept['median_s']:.3f}",
                         f"{case['median_s'] / kept['median_s']:.2f}x"])
    return rows


def plot(results: dict[str, Any], path: Path) -> bool:
    """Time and peak RSS against M, one line per implementation and mode, log-log; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter
    except ImportError:
        return False
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    settings = results["settings"]
    for case in results["cases"]:
        if _ok(case):
            malloc = "" if case.get("malloc", "default") == "default" else f" {case['malloc']} malloc"
            series.setdefault((f"{case['impl']} {case_precision(case, settings)}{malloc}", case["mode"]),
                              []).append(case)
    colors = {impl: f"C{i % 10}" for i, impl in enumerate(dict.fromkeys(impl for impl, _ in series))}
    for (impl, mode), points in sorted(series.items()):
        points.sort(key=lambda c: c["m"])
        ms = [c["m"] for c in points]
        style = {"color": colors[impl], "linestyle": "-" if mode == "train" else "--", "marker": "o",
                 "label": f"{impl} {mode}"}
        ax_t.plot(ms, [c["median_s"] for c in points], **style)
        ax_m.plot(ms, [c["peak_rss_mib"] for c in points], **style)
    for ax, label in ((ax_t, "median step time (s)"), (ax_m, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (inputs)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax_t.legend(fontsize=7)
    fig.suptitle(f"perceivers bench ({', '.join(settings_precisions(settings))})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True


def write_outputs(results: dict[str, Any], out: str | Path) -> dict[str, Path | None]:
    """``out/bench.json``, ``out/bench.md`` and ``out/bench.png`` (None when matplotlib is missing), each written
    atomically; the folder is created."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "bench.json", results)
    text = format_table(results)
    atomic_write(folder / "bench.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    png = folder / "bench.png"
    return {"json": folder / "bench.json", "markdown": folder / "bench.md", "png": png if plot(results, png) else None}


def ar_table_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per implementation of an AR bench: prompt pass, tokens/s with and without it, ratios (ours / theirs:
    > 1 means we are faster) and per-token flatness."""
    ours = next((c for c in results["cases"] if c["impl"] == "ours" and "tokens_per_s" in c), None)
    rows = []
    for case in results["cases"]:
        if "tokens_per_s" not in case:
            reason = case.get("unavailable") or f"failed: {case.get('error')}"
            rows.append([case["impl"], reason.replace("|", "/")] + ["—"] * 8)
            continue
        total = ratio(ours["tokens_per_s"], case["tokens_per_s"]) if ours else None
        decode = ratio(ours["decode_tokens_per_s"], case["decode_tokens_per_s"]) if ours else None
        rows.append([case["impl"], f"{case['params']:,}", f"{case['prefill_s']:.2f}", f"{case['tokens_per_s']:.1f}",
                     _fmt(total, ".2f", "x"), f"{case['decode_tokens_per_s']:.1f}", _fmt(decode, ".2f", "x"),
                     f"{case['ms_per_token_start']:.1f}", f"{case['ms_per_token_end']:.1f}",
                     f"{case['end_over_start']:.2f}"])
    return rows


def format_ar_table(results: dict[str, Any]) -> str:
    """The markdown report of ``perceivers bench --ar``."""
    s, machine = results["settings"], results["machine"]
    lines = [(f"Machine: {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}; "
              f"{results.get('date', '')}."),
             (f"Perceiver AR greedy generation, batch 1, fp32: {s['new_tokens']} new tokens after a {s['prompt_len']}-"
              f"token prompt, {s['latents']} latents x {s['channels']} channels, {s['layers']} layers, {s['heads']} "
              f"heads; fastest of {s['rounds']} round(s), each implementation in its own process; lucidrains (no "
              f"cache) timed on its first {s['lucidrains_tokens']} tokens."),
             ("Ratio = our tokens/s / theirs (> 1: we are faster); start / end = mean ms per token over the first / "
             f"last {s['window']} steps."),
             "",
             ("| impl | params | prompt pass (s) | tokens/s (all) | ratio | tokens/s (decoding) | ratio | ms/token "
             "start | ms/token end | end/start |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in ar_table_rows(results)]
    return "\n".join(lines) + "\n"


def write_ar_outputs(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``out/bench_ar.json`` and ``out/bench_ar.md``, each written atomically; the folder is created."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "bench_ar.json", results)
    text = format_ar_table(results)
    atomic_write(folder / "bench_ar.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return {"json": folder / "bench_ar.json", "markdown": folder / "bench_ar.md"}
