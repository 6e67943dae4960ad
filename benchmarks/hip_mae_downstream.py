"""Downstream value of MAE-learned HiP positions: the same digit classifier, same budget, different positions.

Every arm fine-tunes ``hip-mae-digits-classifier`` (the encoder half of ``hip-mae-digits`` + mean pool +
linear head) with the ``hip-mae-finetune`` recipe's engine settings and seed, so the weights other than the
position table start identical, and the data order and augmentation are the same. Arms:

- ``mae-frozen`` / ``mae-trainable``: position table copied from the MAE-pretrained HiP, frozen / trained;
- ``random-frozen`` / ``random-trainable``: the official fan-in initialisation, frozen / trained;
- ``fourier``: fixed 2-D Fourier features (official order, 7 bands, zero-padded to 32 channels);
- ``mae-encoder``: the MAE model's embedder, position table and encoder + processor blocks (frozen table).

The per-slot position projection is trained in every arm. Without ``--pretrained`` the MAE model is trained
first with the ``hip-mae`` recipe's defaults (into ``OUT/mae``).

    perceivers train hip-mae --threads 1                      # ~3 min, runs/hip-mae/model
    python benchmarks/hip_mae_downstream.py --pretrained runs/hip-mae/model --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

ARMS = {
    "mae-frozen": dict(positions="mae"),
    "mae-trainable": dict(positions="mae", freeze_positions=False),
    "random-frozen": dict(positions="random"),
    "random-trainable": dict(positions="random", freeze_positions=False),
    "fourier": dict(positions="fourier"),
    "mae-encoder": dict(positions="mae", transfer="encoder"),
}


def neighbour_similarity(table: torch.Tensor) -> float:
    """Mean cosine similarity of 4-neighbour pixel pairs minus that of all pairs of a square ``(M, C)`` table:
    > 0 when the table encodes 2-D adjacency (0 for an unstructured table)."""
    side = int(table.shape[0] ** 0.5)
    unit = torch.nn.functional.normalize(table.float(), dim=1)
    cos = unit @ unit.T  # (M, M)
    grid = torch.arange(side * side).view(side, side)
    pairs = torch.cat([torch.stack([grid[:, :-1].flatten(), grid[:, 1:].flatten()], 1),
                       torch.stack([grid[:-1].flatten(), grid[1:].flatten()], 1)])
    off_diagonal = cos[~torch.eye(len(cos), dtype=torch.bool)]
    return (cos[pairs[:, 0], pairs[:, 1]].mean() - off_diagonal.mean()).item()


def main(argv: list[str] | None = None) -> None:
    from perceivers.core.files import write_json
    from perceivers.training.hip_mae import fourier_position_table
    from perceivers.training.loop import run_task
    from perceivers.training.recipes import hip_mae, hip_mae_finetune

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", default=None, help="folder of a saved hip-mae model (default: train one)")
    p.add_argument("--arms", default="mae-frozen,random-trainable,fourier,mae-trainable,random-frozen",
                   help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/hip-mae-downstream")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    pretrained = args.pretrained
    if pretrained is None:
        mae = hip_mae()
        run_task(mae.task, mae.engine, out / "mae", progress=False)
        pretrained = str(out / "mae" / "model")
    from perceivers.models import from_pretrained
    from perceivers.models.hip.blocks import init_table_fan_in

    mae_table = from_pretrained(pretrained).position_tables["image"].detach()
    random_table = torch.empty_like(mae_table)
    init_table_fan_in(random_table)
    print("neighbour cosine similarity minus mean (2-D structure of the table): "
          f"MAE {neighbour_similarity(mae_table):.3f}, random {neighbour_similarity(random_table):.3f}, "
          f"Fourier {neighbour_similarity(fourier_position_table(8, mae_table.shape[1])):.3f}")
    base = hip_mae_finetune()
    engine = dataclasses.replace(base.engine, seed=args.seed, checkpoint_every=0,
                                 **({"steps": args.steps} if args.steps else {}))
    print(f"fine-tuning {engine.steps} steps x batch {engine.batch_size}, lr {engine.lr}, seed {engine.seed}; "
          f"MAE positions from {pretrained}; torch {torch.__version__}, {args.threads} thread(s)")
    print("| arm | positions | test accuracy | test loss | train s |")
    print("|---|---|---:|---:|---:|")
    rows = []
    for arm in arms:
        task = dataclasses.replace(base.task, pretrained=pretrained, **ARMS[arm])
        start = time.perf_counter()
        result = run_task(task, engine, out / arm, progress=False, log=lambda *a, **k: None)
        n = int(result["num_test"])
        row = {"arm": arm, **ARMS[arm], "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
               "correct": round(result["test_accuracy"] * n), "num_test": n,
               "train_seconds": result["train_seconds"], "wall_seconds": time.perf_counter() - start}
        rows.append(row)
        frozen = "fixed" if task.positions == "fourier" else ("frozen" if task.freeze_positions else "trained")
        print(f"| {arm} | {task.positions} ({frozen}) | {row['test_accuracy']:.4f} ({row['correct']}/{n}) | "
              f"{row['test_loss']:.4f} | {row['train_seconds']:.0f} |", flush=True)
    write_json(out / "results.json", {"pretrained": pretrained, "engine": engine.to_dict(), "arms": rows})


if __name__ == "__main__":
    main()
