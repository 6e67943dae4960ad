"""Does the long context help? Perceiver AR (context M, N latents) vs a same-size causal transformer
that sees only the last N tokens, at equal training compute, batch and optimiser, on the stdlib bytes.

Equal compute: the training FLOPs of one step of each model (forward + backward, counted by
``torch.utils.flop_counter.FlopCounterMode`` on a real batch) set the baseline's number of steps to
``steps * flops(Perceiver AR) / flops(baseline)`` (``--equal-steps`` gives both ``--steps`` instead).

The baseline is the same model with ``max_context_length = N``: every input position is a latent, so
it is a plain causal transformer (one causal cross-attention layer, then the latent self-attention
stack) with exactly the same parameters. Both predict ``N`` targets per training window; both are
scored on the same validation targets (the last ``N`` bytes of the recipe's fixed validation windows),
the Perceiver AR through all ``M`` preceding inputs, the baseline through the last ``N`` only.

Rotary wavelengths: by default each model spans 1..its own context (the official rule,
``max_wavelength = max_context_length``), so the baseline has finer short-range frequencies than the
Perceiver AR. ``--baseline-wavelength shared`` gives the baseline the Perceiver AR's range (1..M):
then the two differ only in the context they see. ``--only baseline`` (or ``ar``) trains one of the two
(the step counts stay the equal-compute ones).

Run: ``python benchmarks/ar_long_context.py --threads 1`` (defaults = ``perceivers train text``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from perceivers.data.text import load_corpus, random_windows, validation_windows
from perceivers.models import create_model
from perceivers.training.lm import (
    LMTrainConfig,
    evaluate_bits_per_byte,
    lm_loss,
    train_lm,
)


def step_flops(context: int, args, corpus) -> int:
    """Training FLOPs (forward + backward) of one batch for the model with this context."""
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    model = create_model("perceiver-ar-stdlib-bytes", max_context_length=context, num_latents=args.latents)
    ids, lengths = random_windows(corpus.train, batch_size=args.batch_size, context=context, min_length=args.latents,
                                  generator=torch.Generator().manual_seed(0))
    aten = torch.ops.aten
    # The CPU attention kernels have no FLOP formula in torch: count them like the fused GPU ones
    # (full, unmasked attention, as torch does for those).
    sdpa = {aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v)}
    with FlopCounterMode(display=False, custom_mapping=sdpa) as counter:
        lm_loss(model, ids, lengths, args.latents).backward()
    return counter.get_total_flops()


def run(name: str, context: int, args, corpus, val: torch.Tensor, train: LMTrainConfig,
        max_wavelength: int | None = None) -> dict:
    torch.manual_seed(train.seed)
    model = create_model("perceiver-ar-stdlib-bytes", max_context_length=context, num_latents=args.latents,
                         max_wavelength=max_wavelength)

    def sample(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return random_windows(corpus.train, batch_size=train.batch_size, context=context, min_length=args.latents,
                              generator=g)

    stats = train_lm(model, sample, train, num_latents=args.latents, progress=not args.no_progress)
    result = evaluate_bits_per_byte(model, val, num_latents=args.latents, context=context)
    out = {"model": name, "context": context, "latents": args.latents, "parameters": model.num_parameters(),
           "max_wavelength": model.config.wavelength, "steps": train.steps,
           "validation_bits_per_byte": result["bits_per_byte"], "validation_bytes": result["num_predicted_bytes"],
           "train_seconds": stats["train_seconds"], "train_loss": stats["train_loss"]}
    print(json.dumps(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=1024, help="Perceiver AR context M")
    p.add_argument("--latents", type=int, default=128, help="latents N = the baseline's context")
    p.add_argument("--steps", type=int, default=300, help="Perceiver AR training steps")
    p.add_argument("--equal-steps", action="store_true", help="give the baseline --steps too (not equal compute)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--baseline-wavelength", choices=["own", "shared"], default="own",
                   help="baseline rotary wavelengths up to its own context N (official rule) or up to M")
    p.add_argument("--only", choices=["both", "ar", "baseline"], default="both", help="train only one model")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus()
    val = validation_windows(corpus.validation, num_windows=args.eval_windows, context=args.context)
    train = LMTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    start = time.perf_counter()
    flops = {ctx: step_flops(ctx, args, corpus) for ctx in (args.context, args.latents)}
    base_steps = args.steps if args.equal_steps else round(args.steps * flops[args.context] / flops[args.latents])
    print(f"training FLOPs per step: Perceiver AR {flops[args.context]:.3e}, baseline {flops[args.latents]:.3e}; "
          f"steps {args.steps} vs {base_steps}")
    base_train = dataclasses.replace(train, steps=base_steps)
    results = []
    if args.only != "baseline":
        results.append(run(f"Perceiver AR (M={args.context}, N={args.latents})", args.context, args, corpus, val,
                           train))
    if args.only != "ar":
        shared = args.baseline_wavelength == "shared"
        results.append(run(f"causal transformer (context {args.latents}"
                           f"{f', wavelengths 1..{args.context}' if shared else ''})", args.latents, args, corpus,
                           val, base_train, max_wavelength=args.context if shared else None))
    for r in results:
        r["train_flops"] = flops[r["context"]] * r["steps"]
    print(f"\n| model | context seen | steps | training FLOPs | validation bits/byte | train s |\n"
          f"|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['context']} | {r['steps']} | {r['train_flops']:.2e} | "
              f"{r['validation_bits_per_byte']:.4f} | {r['train_seconds']:.0f} |")
    print(f"({results[0]['validation_bytes']:,} validation bytes, batch {args.batch_size}, "
          f"total {time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
