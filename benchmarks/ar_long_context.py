"""Does the long context help? Perceiver AR (context M, N latents) vs a same-size causal transformer
that sees only the last N tokens, at equal training compute, batch and optimiser, on the stdlib bytes
(``--task text``) or the Bach chorales (``--task music``).

Equal compute: the training FLOPs of one step of each model (forward + backward, counted by
``torch.utils.flop_counter.FlopCounterMode`` on a real batch) set the baseline's number of steps to
``steps * flops(Perceiver AR) / flops(baseline)`` (``--equal-steps`` gives both ``--steps`` instead).

The baseline is the same model with ``max_context_length = N``: every input position is a latent, so
it is a plain causal transformer (one causal cross-attention layer, then the latent self-attention
stack) with exactly the same parameters. ``--baseline-context C`` (``N < C < M``) makes the baseline a
short-context Perceiver AR instead (context ``C``, the same ``N`` latents). Both predict ``N`` targets per
training window; both are scored on the same validation targets (the last ``N`` tokens of the recipe's fixed
validation windows), the Perceiver AR through all ``M`` preceding inputs, the baseline through the last ``C``
only. The metric is the task's: bits per byte (text), nats per event (music).

Rotary wavelengths: by default each model spans 1..its own context (the official rule,
``max_wavelength = max_context_length``), so the baseline has finer short-range frequencies than the
Perceiver AR. ``--baseline-wavelength shared`` gives the baseline the Perceiver AR's range (1..M):
then the two differ only in the context they see. ``--only baseline`` (or ``ar``) trains one of the two
(the step counts stay the equal-compute ones).

Both train on the engine (``run_task``) as the ``--task``'s task with their own context and that recipe's engine
settings (batch, learning rate, warm-up, decay, clipping; ``--steps``, ``--batch-size``, ``--lr``, ``--seed`` override
them; ``--context``, ``--latents``, ``--eval-windows`` default to the recipe's), into ``OUT/ar`` and ``OUT/baseline``
(``--out``; default a temporary folder).

Run: ``python benchmarks/ar_long_context.py --threads 1`` (defaults = ``perceivers train text``);
``--task music`` (defaults = ``perceivers train music``), with ``--baseline-context 256`` for the short Perceiver AR.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

from perceivers.models import get_config
from perceivers.training.config import EngineConfig
from perceivers.training.loop import run_task
from perceivers.training.recipes import music, text
from perceivers.training.task import Task

#: Per task: its recipe, its validation metric, the count of scored targets, the metric's unit.
TASKS = {"text": (text, "validation_bits_per_byte", "num_validation_bytes", "bits/byte"),
         "music": (music, "validation_nats_per_event", "num_validation_events", "nats/event")}


def step_flops(task: Task, batch_size: int) -> int:
    """Training FLOPs (forward + backward) of the task's loss on its first ``batch_size`` training windows."""
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    torch.manual_seed(0)
    model = task.build_model()
    dataset = task.train_dataset(0)
    batch = default_collate([dataset[i] for i in range(batch_size)])
    aten = torch.ops.aten
    # The CPU attention kernels have no FLOP formula in torch: count them like the fused GPU ones
    # (full, unmasked attention, as torch does for those).
    sdpa = {aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v)}
    with FlopCounterMode(display=False, custom_mapping=sdpa) as counter:
        task.training_loss(model, batch)[0].backward()
    return counter.get_total_flops()


def run(name: str, task: Task, engine: EngineConfig, out: Path, progress: bool, kind: str) -> dict:
    """Train ``task`` on the engine into ``out`` and report its validation metric (``TASKS[kind]``)."""
    cpu = time.process_time()
    result = run_task(task, engine, out, progress=progress, log=lambda *a, **k: None)
    config = get_config(task.model, **task.model_overrides())
    _, metric, count, _ = TASKS[kind]
    row = {"model": name, "context": config.max_context_length, "latents": config.num_latents,
           "parameters": result["num_parameters"], "max_wavelength": config.wavelength, "steps": result["steps"],
           metric: result[metric], "validation_targets": result[count], "train_seconds": result["train_seconds"],
           "cpu_seconds": time.process_time() - cpu, "train_loss": result["train_loss"]}
    print(json.dumps(row))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), default="text", help="which recipe's data, model and engine")
    p.add_argument("--context", type=int, default=None, help="Perceiver AR context M (default: the recipe's)")
    p.add_argument("--latents", type=int, default=None, help="latents N (default: the recipe's)")
    p.add_argument("--baseline-context", type=int, default=None,
                   help="the baseline's context C (default N: a causal transformer; N < C < M: a short Perceiver AR)")
    p.add_argument("--steps", type=int, default=None, help="Perceiver AR training steps (default: the recipe's)")
    p.add_argument("--equal-steps", action="store_true", help="give the baseline --steps too (not equal compute)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval-windows", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--baseline-wavelength", choices=["own", "shared"], default="own",
                   help="baseline rotary wavelengths up to its own context N (official rule) or up to M")
    p.add_argument("--only", choices=["both", "ar", "baseline"], default="both", help="train only one model")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default=None, help="run folders OUT/ar and OUT/baseline (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe, metric, _, unit = TASKS[args.task]
    recipe = recipe()
    config = get_config(recipe.task.model, **recipe.task.model_overrides())
    m, n = args.context or config.max_context_length, args.latents or config.num_latents
    c = args.baseline_context or n
    if not n <= c <= m:
        p.error(f"--baseline-context {c}: expected a context from the latents N={n} to the Perceiver AR's M={m}")
    steps, batch = args.steps or recipe.engine.steps, args.batch_size or recipe.engine.batch_size
    # Both score the last N tokens of the same windows of M + 1 tokens, each through its own context.
    task = dataclasses.replace(recipe.task, context=m, num_latents=n,
                               eval_windows=args.eval_windows or recipe.task.eval_windows, eval_context=m)
    shared = args.baseline_wavelength == "shared"
    base_task = dataclasses.replace(task, context=c, max_wavelength=m if shared else None)
    engine = dataclasses.replace(recipe.engine, steps=steps, batch_size=batch, lr=args.lr or recipe.engine.lr,
                                 seed=args.seed, checkpoint_every=0, eval_every=0, log_every=max(1, steps // 30))
    start = time.perf_counter()
    flops = {m: step_flops(task, batch), c: step_flops(base_task, batch)}
    base_steps = steps if args.equal_steps else round(steps * flops[m] / flops[c])
    print(f"training FLOPs per step: Perceiver AR {flops[m]:.3e}, baseline {flops[c]:.3e}; steps {steps} vs {base_steps}")
    base_engine = dataclasses.replace(engine, steps=base_steps, log_every=max(1, base_steps // 30))
    base_name = (f"causal transformer (context {n}" if c == n else f"Perceiver AR (M={c}, N={n}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        if args.only != "baseline":
            results.append(run(f"Perceiver AR (M={m}, N={n})", task, engine, out / "ar", not args.no_progress,
                               args.task))
        if args.only != "ar":
            results.append(run(f"{base_name}{f', wavelengths 1..{m}' if shared else ''})", base_task, base_engine,
                               out / "baseline", not args.no_progress, args.task))
    for r in results:
        r["train_flops"] = flops[r["context"]] * r["steps"]
    print(f"\n| model | context seen | steps | training FLOPs | validation {unit} | train s | CPU s |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['context']} | {r['steps']} | {r['train_flops']:.2e} | "
              f"{r[metric]:.4f} | {r['train_seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    print(f"({results[0]['validation_targets']:,} validation targets, batch {batch}, "
          f"total {time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)

if __name__ == "__main__":
    main()
