"""``perceivers convert perceiver-ar`` and ``perceivers convert hip``: official Haiku parameter trees of
google-research/perceiver-ar and google-deepmind/hierarchical_perceiver into our folder format.

The configuration is read from the tree; flags supply what the tree cannot fix (head counts, latents, context
length, groups). Every problem with the file (missing, unexpected and mis-shaped entries) is one error line.
"""

from __future__ import annotations

import argparse
from typing import Any

from perceivers.cli.common import user_input

OFFICIAL = ("perceiver-ar", "hip")
_SWEEPS = ("random_mirrored_32", "random_mirrored_131072", "imagenet_w_positions")


def int_list(text: str) -> tuple[int, ...]:
    """``"16,4,1"`` -> ``(16, 4, 1)`` (one int per block)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 16,1,16, got {text!r}") from None


def add_official_parsers(conv: argparse._SubParsersAction) -> None:
    a = conv.add_parser("perceiver-ar", help="official Perceiver AR parameters (google-research/perceiver-ar, Haiku)",
                        description="Convert an official Perceiver AR parameter tree (a Haiku pickle of "
                                    "{module: {param: array}}, or an .npz of 'module/param' keys) to our folder. "
                                    "Vocabulary, widths, layers, widenings and position tables are read from the "
                                    "tree; heads, latents and context length come from --sweep or the flags "
                                    "(defaults: 16 heads, 1024 latents, context = table rows - 1).")
    a.add_argument("params", help="official parameter file (.pickle / .pkl / .npz)")
    a.add_argument("out", help="output folder")
    a.add_argument("--sweep", choices=_SWEEPS, default=None,
                   help="released experiment.py sweep the parameters come from (fills every flag below)")
    for flag, text in (("max-context-length", "longest input M (default: position table rows - 1; needed for rotary)"),
                       ("num-latents", "latents N (default: min(1024, M))"),
                       ("num-cross-attend-heads", "cross-attention heads (default 16)"),
                       ("num-self-attend-heads", "self-attention heads (default 16)"),
                       ("max-wavelength", "rotary wavelength range (default: M)"),
                       ("position-table-size", "rows of the absolute table (read from the file)")):
        a.add_argument(f"--{flag}", type=int, default=None, help=text)
    a.add_argument("--rotary-fraction", type=float, default=None, help="rotary trees only (released: 0.5)")
    h = conv.add_parser("hip", help="official HiP / Perceiver IO parameters (google-deepmind/hierarchical_perceiver)",
                        description="Convert an official HiP, HiPClassBottleneck or Perceiver IO parameter tree "
                                    "(Haiku pickle or 'module/param' .npz) to our folder. Modalities, widths, "
                                    "layers, latents in all and widenings are read from the tree; groups and heads "
                                    "from --model (default: the registered variant the tree matches) or the flags.")
    h.add_argument("params", help="official parameter file (.pickle / .pkl / .npz)")
    h.add_argument("out", help="output folder")
    h.add_argument("--model", default=None, help="registered HiP variant for groups and heads (e.g. hip-16)")
    for flag in ("num-groups", "num-self-attend-heads", "num-cross-attend-heads"):
        h.add_argument(f"--{flag}", type=int_list, default=None, metavar="N,N,...", help="one int per block")
    h.add_argument("--regroup-type", choices=("reshape", "transpose_reshape"), default=None,
                   help="how blocks regroup latents (official default: reshape)")
    h.add_argument("--sort-modalities", action="store_true",
                   help="order each call's modalities by name, as jax.jit does (see docs/models.md)")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n) not in (None, False)}


def cmd_convert_official(args: argparse.Namespace) -> int:
    if args.source == "perceiver-ar":
        from perceivers.converters.perceiver_ar_official import (
            convert_perceiver_ar_file,
        )

        overrides = _given(args, ("max_context_length", "num_latents", "num_cross_attend_heads",
                                  "num_self_attend_heads", "max_wavelength", "position_table_size", "rotary_fraction"))
        with user_input():
            model = convert_perceiver_ar_file(args.params, sweep=args.sweep, **overrides)
    else:
        from perceivers.converters.hip_official import convert_hip_file

        overrides = _given(args, ("num_groups", "num_self_attend_heads", "num_cross_attend_heads", "regroup_type",
                                  "sort_modalities"))
        with user_input():
            model = convert_hip_file(args.params, model=args.model, **overrides)
    with user_input("OUT"):
        out = model.save_pretrained(args.out)
    print(f"converted {args.params} ({model.num_parameters():,} parameters) -> {out}")
    return 0
