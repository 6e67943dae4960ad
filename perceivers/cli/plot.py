"""``perceivers plot``: a run's curves (``plot RUN_DIR``), where a trained model's latents look (``plot attention
--checkpoint MODEL``) and its held-out predictions (``plot predictions --checkpoint MODEL``).

Errors follow :mod:`perceivers.cli.main`: a flag of the other form, a missing ``--checkpoint``, a bad ``--index`` /
``--recipe`` / ``--out`` and a checkpoint that fits no recipe are one line and exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perceivers.cli.common import load_model, set_threads
from perceivers.core.errors import ConfigError

#: ``plot``'s first argument that is a kind of picture rather than a run folder (write ./attention for a run
#: folder of that name).
PICTURES = ("attention", "predictions")
#: The flags of ``plot attention`` / ``plot predictions`` (``None`` when not given).
MODEL_FLAGS = ("checkpoint", "recipe", "index", "latents", "count", "device", "threads")


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="draw a run's curves, or a trained model's attention maps or predictions, to PNG",
        description="`perceivers plot RUN_DIR` reads RUN_DIR/metrics.csv (and eval.csv) written by `perceivers "
                    "train` and draws every logged metric against the step to RUN_DIR/curves.png. `perceivers plot "
                    "attention --checkpoint MODEL` draws where the latents of a Perceiver IO model of the digits, "
                    "mnist, flow or pointcloud recipe look (encoder cross-attention) on a held-out example; "
                    "`perceivers plot predictions --checkpoint MODEL` draws held-out predictions (digits, mnist: "
                    "test images and a confusion matrix; pointcloud: point sets and the permutation check). Needs "
                    "matplotlib: pip install 'perceivers[plot]'.")
    p.add_argument("run_dir", metavar="RUN_DIR|attention|predictions",
                   help="run folder of `perceivers train` (holds metrics.csv), or the picture to draw of --checkpoint")
    p.add_argument("--out", default=None, help="image path (default: RUN_DIR/curves.png, or attention.png / "
                                               "predictions.png beside the --checkpoint folder)")
    p.add_argument("--checkpoint", default=None, help="model folder, e.g. runs/digits/model (attention, predictions)")
    p.add_argument("--recipe", default=None, help="whose held-out data to use (default: the recipe the model fits)")
    p.add_argument("--index", type=int, default=None, help="attention: the held-out example (default 0; flow: 0 is "
                                                          "the Middlebury pair, 1.. held-out synthetic pairs)")
    p.add_argument("--latents", type=int, default=None, help="attention: latents drawn (default 6, the ones the "
                                                            "decoder reads most)")
    p.add_argument("--count", type=int, default=None, help="predictions: examples drawn (default 48 images, 12 "
                                                          "point sets)")
    p.add_argument("--device", default=None, help="attention, predictions: torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="attention, predictions: CPU threads")


def cmd_plot(args: argparse.Namespace) -> int:
    picture = args.run_dir
    given = [f"--{name}" for name in MODEL_FLAGS if getattr(args, name) is not None]
    if picture not in PICTURES:
        if given:
            raise ConfigError(f"{given[0]} belongs to `perceivers plot attention|predictions --checkpoint MODEL`; "
                              f"`perceivers plot RUN_DIR` draws the curves of the run folder {picture!r}")
        from perceivers.training.plot import plot_run

        out = plot_run(picture, args.out)  # a missing or malformed CSV, or a bad --out, is a UserError
        print(f"wrote {out}")
        return 0
    if args.checkpoint is None:
        raise ConfigError(f"perceivers plot {picture} needs --checkpoint MODEL_DIR (a model folder such as "
                          "runs/digits/model); for a run folder named like this, write ./" + picture)
    for name in ("count",) if picture == "attention" else ("index", "latents"):
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name} is not a flag of `perceivers plot {picture}`")
    set_threads(args.threads)
    out = args.out or str(Path(args.checkpoint).resolve().parent / f"{picture}.png")
    model = load_model(args.checkpoint, args.device or "cpu")
    model.eval()
    if picture == "attention":
        from perceivers.training.plot_attention import plot_attention

        index, latents = 0 if args.index is None else args.index, 6 if args.latents is None else args.latents
        path = plot_attention(model, out=out, recipe=args.recipe, index=index, latents=latents)
    else:
        from perceivers.training.plot_predictions import plot_predictions

        path = plot_predictions(model, out=out, recipe=args.recipe, count=args.count)
    print(f"wrote {path}")
    return 0
