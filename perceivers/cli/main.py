"""The ``perceivers`` command line: ``train``, ``eval``, ``models``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from perceivers import __version__

_TRAIN_FIELDS = {"epochs": int, "batch_size": int, "lr": float, "weight_decay": float, "seed": int,
                 "warmup_fraction": float, "label_smoothing": float, "grad_clip": float, "device": str}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a recipe on its embedded data",
        description="Train a recipe, evaluate it on its fixed test split and save the model (config.json + "
                    "model.safetensors) and metrics.json under --out.",
)
    p.add_argument("recipe", choices=["digits"], help="digits: Perceiver IO on scikit-learn's 1,797 real 8x8 digits")
    p.add_argument("--out", default=None, help="output folder (default: runs/RECIPE)")
    from perceivers.training.recipes import DigitsRecipe

    defaults = DigitsRecipe()
    for name, typ in _TRAIN_FIELDS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None,
                       help=f"override {name} (digits default: {getattr(defaults.train, name)})")
    p.add_argument("--max-shift", type=int, default=None,
                   help=f"augmentation: random shift in pixels, 0 = off (digits default: {defaults.max_shift})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="re-evaluate a saved model on a recipe's test split",
                       description="Load a model folder written by `perceivers train` and report test accuracy.")
    p.add_argument("recipe", choices=["digits"], help="which recipe's test split to use")
    p.add_argument("--checkpoint", required=True, help="model folder (config.json + model.safetensors)")
    p.add_argument("--device", default="cpu", help="torch device")


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts",
                       description="List the model registry; counts are computed on the meta device (no memory).")
    p.add_argument("filter", nargs="?", default=None, help="only names containing this substring")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perceivers", description="Perceiver, Perceiver IO, Perceiver AR and HiP in PyTorch.")
    parser.add_argument("--version", action="version", version=f"perceivers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_models(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from perceivers.training.recipes import RECIPES

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.recipe]()
    changes = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **changes))
    if args.max_shift is not None:
        if args.max_shift < 0:
            raise ValueError(f"--max-shift must be >= 0, got {args.max_shift}")
        recipe = dataclasses.replace(recipe, max_shift=args.max_shift)
    recipe.run(args.out or f"runs/{args.recipe}", progress=not args.no_progress)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from perceivers.data.digits import load_digits_split
    from perceivers.hub import from_pretrained
    from perceivers.training.trainer import evaluate

    model = from_pretrained(args.checkpoint, device=args.device)
    data = load_digits_split()
    result = evaluate(model, data.test_images, data.test_labels, device=args.device)
    n = result["num_examples"]
    print(f"test accuracy: {result['accuracy']:.4f} ({round(result['accuracy'] * n)}/{n}), "
          f"test loss {result['loss']:.4f}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from perceivers.registry import create_model, get_entry, list_models

    names = list_models(args.filter)
    width = max((len(n) for n in names), default=4)
    print(f"{'name':<{width}}  {'parameters':>13}  description")
    for name in names:
        count = create_model(name, device="meta").num_parameters()
        print(f"{name:<{width}}  {count:>13,}  {get_entry(name).description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "eval": cmd_eval, "models": cmd_models}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"perceivers {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
