"""The official synthetic copy task (``RandomMirroredDataset``): retrieval from far back in the context.

A sequence of ``S`` tokens is ``[SOS, x_1 .. x_k, x_k .. x_1, EOS]`` with ``k = (S - 2) / 2`` uniformly
random bytes (ids 3..258). Inputs are the first ``S - 1`` tokens (context ``M = S - 1``); the ``N``
latents sit on the last positions and predict the mirrored half, whose token ``x_j`` must be fetched
from ``2 (k - j) + 1`` positions back. As the official ``random_mirrored_*`` sweeps: absolute sinusoidal
(frozen) positions. Reported: teacher-forced next-token accuracy on the mirrored half of fresh
sequences (chance = 1/256), and the accuracy of the farthest quarter of the copies.

Run: ``python benchmarks/ar_copy_task.py --threads 1``.
"""

from __future__ import annotations

import argparse
import json

import torch

from perceivers.data.text import BYTE_OFFSET, EOS_ID, SOS_ID
from perceivers.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceivers.training.lm import LMTrainConfig, latent_targets, train_lm


def mirrored(batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """``(B, S)`` copy-task sequences."""
    k = (length - 2) // 2
    x = torch.randint(BYTE_OFFSET, 256 + BYTE_OFFSET, (batch, k), generator=g)
    sos, eos = torch.full((batch, 1), SOS_ID), torch.full((batch, 1), EOS_ID)
    return torch.cat([sos, x, x.flip(1), eos], dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=64, help="sequence length S (even)")
    p.add_argument("--latents", type=int, default=32)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-sequences", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s, n = args.length, args.latents
    k = (s - 2) // 2
    config = PerceiverARConfig(
        vocab_size=259, max_context_length=s - 1, num_latents=n, num_channels=args.channels,
        num_latent_channels=args.channels, num_self_attend_layers=args.layers, num_cross_attend_heads=4,
        num_self_attend_heads=4, position_encoding="absolute", position_init="sinusoidal")
    model = PerceiverAR(config)
    full = torch.full((args.batch_size,), s)
    train = LMTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_fraction=0.1)
    stats = train_lm(model, lambda g: (mirrored(args.batch_size, s, g), full), train, num_latents=n,
                     progress=not args.no_progress)
    windows = mirrored(args.eval_sequences, s, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        inputs, lengths, targets = latent_targets(windows, torch.full((len(windows),), s), n)
        correct = model.eval()(inputs, lengths, num_latents=n).argmax(-1) == targets  # (B, N)
    # Target index t (in the sequence) of latent i is s - n + i; the mirrored half is t in [k + 1, 2k].
    t = torch.arange(s - n, s)
    copy = (t >= k + 1) & (t <= 2 * k)
    far = copy & (t > 2 * k - k // 4)  # the last quarter of the copy: sources 1 .. k/4 positions from SOS
    result = {"length": s, "latents": n, "steps": args.steps, "batch_size": args.batch_size,
              "copy_accuracy": float(correct[:, copy].float().mean()),
              "far_quarter_accuracy": float(correct[:, far].float().mean()),
              "max_distance": 2 * (k - 1) + 1, "chance": 1 / 256, "train_seconds": stats["train_seconds"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
