"""The ``perceivers`` command line: ``train``, ``eval``, ``plot``, ``models``, ``convert``, ``export``, ``generate``,
``fill-mask``, ``bench``.

Errors follow one policy: a mistake in what the user typed or pointed at is one line on stderr,
``perceivers COMMAND: error: MESSAGE``, naming the argument and what was expected, with exit status 2 (as argparse
does for a malformed command line); anything else is a bug and propagates with its traceback (exit status 1).
Two things count as a user's mistake:

- a :class:`~perceivers.core.errors.UserError`, raised wherever the library validates what it was given: the
  validation toolkit (``ConfigError`` / ``ConfigTypeError``) for every config, recipe, task or engine setting, the
  engine's device and strategy, a task's model, ``--resume``'s checkpoint (``CheckpointError`` is a ``ConfigError``),
  the arguments of ``generate``, ``fill_mask``'s model and text, what ``convert`` cannot express, ``plot``'s files;
  and this module's own checks of its flags;
- a ``ValueError`` or ``OSError`` raised inside a :func:`user_input` block. Such a block wraps only a call whose job
  is to read the user's input: a checkpoint folder, a foreign checkpoint file, ``--set`` text.

No block wraps a computation (training, generation, evaluation, a forward pass), so a plain ``ValueError`` or
``TypeError`` from inside one is never mistaken for bad input and shows where it came from.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

from perceivers import __version__
from perceivers.cli.bench import add_bench, cmd_bench
from perceivers.cli.common import load_model, set_threads, user_input
from perceivers.cli.convert import add_convert, cmd_convert
from perceivers.cli.export import add_export, cmd_export
from perceivers.cli.music import add_music_arguments, cmd_generate_music, wants_music
from perceivers.cli.plot import add_plot, cmd_plot
from perceivers.core.errors import ConfigError, UserError
from perceivers.core.validation import check_int, fail

#: The most tokens ``generate`` streams in one run (its output is allocated up front).
MAX_NEW_TOKENS = 1 << 20


class _RecipeHelp(argparse.Action):
    """``-h/--help`` of ``train`` and ``eval``: the command's help, then (after ``RECIPE``) that recipe's settings
    with their defaults and meaning (``train``: the task's and the engine's; ``eval``: the task's)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        from perceivers.training.recipes import RECIPES, settings_help

        parser.print_help()
        name = getattr(namespace, "recipe", None)
        if name in RECIPES:
            print(f"\nsettings of recipe {name!r}: --NAME VALUE or --set NAME=VALUE, the names of --print-config "
                  "(- for _ works too); default, then meaning\n")
            print(settings_help(RECIPES[name](), engine=parser.prog.endswith(" train")))
        parser.exit()


def _add_train(sub: argparse._SubParsersAction) -> None:
    from perceivers.training.recipes import RECIPES

    p = sub.add_parser(
        "train", help="train a recipe on the training engine (one process, or many under torchrun)", allow_abbrev=False,
        add_help=False,
        description="Train a recipe, evaluate it on its held-out data and save the model (config.json + "
                    "model.safetensors), metrics.json, metrics.csv / eval.csv and checkpoints under --out. "
                    "Any recipe or engine setting can be overridden: --KEY VALUE or --set KEY=VALUE "
                    "(e.g. --lr 3e-4 --optimizer lamb --strategy ddp); a bad key lists the valid ones.",
        epilog="engine keys: steps, epochs, batch_size (global), lr, optimizer (adamw|lamb), schedule "
               "(cosine|constant_cosine|linear|constant), warmup_steps, warmup_fraction, constant_fraction, "
               "weight_decay, grad_clip, grad_accum, precision (fp32|bf16), "
               "activation_checkpointing, compile, seed, checkpoint_every, keep_last, log_every, eval_every, "
               "on_nonfinite (stop|skip), device, strategy (none|ddp|fsdp). Several processes: torchrun "
               "--nproc_per_node N -m perceivers train RECIPE --strategy ddp.")
    p.add_argument("-h", "--help", action=_RecipeHelp, help="show this help (after RECIPE: also the recipe's "
                                                             "settings, defaults and meaning) and exit")
    p.add_argument("recipe", choices=sorted(RECIPES), help="which recipe (see `--print-config`)")
    p.add_argument("--out", default=None, help="run folder (default: runs/RECIPE)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint under OUT/checkpoints (or from CHECKPOINT)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--print-config", action="store_true", help="print the recipe's settings and exit")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY[,KEY...]",
                   help="with --resume: accept these settings differing from the checkpoint's (e.g. epochs)")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream text from a byte-level Perceiver AR checkpoint (music: --midi)",
                       description="Continue --prompt with a byte-level Perceiver AR model (e.g. from `perceivers "
                                   "train text`), printing each token as soon as it is produced.")
    p.add_argument("--checkpoint", required=True, help="model folder (config.json + model.safetensors)")
    p.add_argument("--prompt", default="", help="text to continue (an SOS token is prepended)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_music_arguments(p)  # --midi / --piano-roll: a music checkpoint (perceivers.cli.music)


def _add_fill_mask(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fill-mask", help="fill masked bytes with a byte-level Perceiver IO MLM checkpoint",
                       description="Replace every --mask-token in --text by the byte the masked language model "
                                   "finds most likely (one forward pass, argmax per masked byte, as the official "
                                   "MLM colab) and print the filled text. One mask token stands for one byte.")
    p.add_argument("--checkpoint", required=True, help="model folder (config.json + model.safetensors)")
    p.add_argument("--text", required=True, help='text with masks, e.g. "The capital of France is [MASK][MASK]'
                                                 '[MASK][MASK][MASK][MASK]."')
    p.add_argument("--mask-token", default="[MASK]", help="spelling of one masked byte (default [MASK])")
    p.add_argument("--add-special-tokens", action="store_true",
                   help="wrap the text in [CLS] ... [SEP] as HF's tokenizer does (the official colab does not)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from perceivers.training.recipes import RECIPES

    p = sub.add_parser("eval", help="re-evaluate a saved model with a recipe's own held-out evaluation",
                       description="Load a model folder written by `perceivers train RECIPE` (RUN/model) and run the "
                                   "recipe's held-out evaluation, the one the training run ends with: print the "
                                   "metrics of its metrics.json, one `name: value` line each. The model's own "
                                   "sizes (context, latents, image size) are used; the task's other settings can "
                                   "be set as in `perceivers train` (--KEY VALUE or --set KEY=VALUE).",
                       allow_abbrev=False, add_help=False)
    p.add_argument("-h", "--help", action=_RecipeHelp, help="show this help (after RECIPE: also the recipe's task "
                                                             "settings, defaults and meaning) and exit")
    p.add_argument("recipe", choices=sorted(RECIPES), help="which recipe's evaluation to run")
    p.add_argument("--checkpoint", required=True, help="model folder (config.json + model.safetensors)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a task setting")


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
    add_plot(sub)
    _add_eval(sub)
    _add_models(sub)
    add_convert(sub)
    add_export(sub)
    _add_generate(sub)
    _add_fill_mask(sub)
    add_bench(sub)
    return parser


def _override_pairs(args: argparse.Namespace, extra: list[str], bools: set[str]) -> list[tuple[str, str]]:
    """``--set K=V`` and free ``--key value`` / ``--flag`` tokens as (key, text) pairs."""
    pairs = []
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is invalid: expected KEY=VALUE")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}: settings are --KEY VALUE or --set KEY=VALUE")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif key.replace("-", "_") in bools and (i + 1 == len(extra) or extra[i + 1].startswith("--")):
            value, i = "true", i + 1
        elif i + 1 < len(extra):
            value, i = extra[i + 1], i + 2
        else:
            raise ConfigError(f"{token} needs a value")
        pairs.append((key, value))
    return pairs


def cmd_train(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    import json

    from perceivers.training.loop import run_task
    from perceivers.training.overrides import apply_overrides, bool_keys
    from perceivers.training.recipes import RECIPES

    set_threads(args.threads)
    recipe = RECIPES[args.recipe]()
    with user_input():  # the recipe's and the engine's settings validate the typed values
        recipe = apply_overrides(recipe, _override_pairs(args, extra or [], bool_keys(recipe)))
    if args.print_config:
        print(json.dumps(recipe.to_dict(), indent=2, default=str))
        return 0
    try:  # a bad setting, model or --resume checkpoint is a UserError from inside the engine, before training
        result = run_task(recipe.task, recipe.engine, args.out or f"runs/{args.recipe}", resume=args.resume,
                          allow_change=args.allow_change, progress=not args.no_progress)
    except FloatingPointError as exc:
        print(f"perceivers train: error: {exc}", file=sys.stderr)
        return 3
    return 130 if result.get("interrupted") else 0


def cmd_generate(args: argparse.Namespace) -> int:
    import codecs

    import torch

    from perceivers.generation import generate
    from perceivers.generation.sampling import check_sampling_args
    from perceivers.models.perceiver_ar.model import PerceiverAR
    from perceivers.tokenizers import ARBytesTokenizer

    if wants_music(args):
        return cmd_generate_music(args)
    set_threads(args.threads)
    check_int("--max-new-tokens", args.max_new_tokens, minimum=0)
    if args.max_new_tokens > MAX_NEW_TOKENS:
        fail("--max-new-tokens", args.max_new_tokens, f"at most {MAX_NEW_TOKENS:,} (one run streams at most "
                                                      "2**20 tokens)")
    check_sampling_args(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)  # before loading
    model = load_model(args.checkpoint, args.device)
    tokenizer = ARBytesTokenizer()
    if not isinstance(model, PerceiverAR) or model.config.vocab_size != tokenizer.vocab_size:
        raise ConfigError(f"--checkpoint {args.checkpoint} is not a byte-level Perceiver AR checkpoint "
                          f"(vocab {tokenizer.vocab_size})")
    prompt = tokenizer.encode(args.prompt, sos=True)
    if len(prompt) > model.config.max_context_length:
        raise ConfigError(f"--prompt is {len(prompt)} tokens with its SOS: expected at most the model's "
                          f"max_context_length={model.config.max_context_length}")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def stream(tokens: torch.Tensor) -> None:
        token = int(tokens[0])
        if token >= tokenizer.byte_offset:
            sys.stdout.write(decoder.decode(bytes([token - tokenizer.byte_offset])))
            sys.stdout.flush()

    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    generate(model, [prompt], max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_token_id=tokenizer.eos_id,
             generator=generator, streamer=stream)
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    sys.stdout.flush()
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from perceivers.generation.fill_mask import fill_mask

    set_threads(args.threads)
    model = load_model(args.checkpoint, args.device)
    # fill_mask checks the model and the text (ConfigError) before its one forward pass, which is not wrapped
    result = fill_mask(model, args.text, mask_token=args.mask_token, add_special_tokens=args.add_special_tokens,
                       device=args.device)
    print(result.text)
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    """The recipe's task, fitted to the loaded model (:meth:`Task.for_model`), runs its ``evaluate``."""
    from perceivers.training.overrides import apply_overrides, bool_keys
    from perceivers.training.recipes import RECIPES

    recipe = RECIPES[args.recipe]()
    with user_input():
        changed = apply_overrides(recipe, _override_pairs(args, extra or [], bool_keys(recipe)))
    if changed.engine != recipe.engine:
        raise ConfigError("eval takes the task's settings only (--KEY VALUE of `perceivers train "
                          f"{args.recipe} --print-config` outside its engine)")
    model = load_model(args.checkpoint, args.device)
    with user_input(f"--checkpoint {args.checkpoint}"):
        task = changed.task.for_model(model)
    metrics = task.evaluate(model)  # what the training run's final evaluation wrote to metrics.json
    for key, value in metrics.items():
        print(f"{key}: {value}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from perceivers.models import create_model, get_entry, list_models

    names = list_models(args.filter)
    if not names:
        raise ConfigError(f"filter {args.filter!r} matches no registered model: {_close_names(args.filter)}")
    width = max((len(n) for n in names), default=4)
    print(f"{'name':<{width}}  {'parameters':>13}  description")
    for name in names:
        count = create_model(name, device="meta").num_parameters()
        print(f"{name:<{width}}  {count:>13,}  {get_entry(name).description}")
    return 0


def _close_names(text: str) -> str:
    """Registered names close to ``text``, or else the families to filter by."""
    import difflib

    from perceivers.models import list_models

    names = list_models()
    close = difflib.get_close_matches(text, names, n=5, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(close)}?"
    families = sorted({"hip" if n.startswith("hip") else "-".join(n.split("-")[:2]) for n in names})
    return f"filter by a family ({', '.join(families)}) or give no filter to list all {len(names)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; Ctrl-C at any point after the package is imported (parsing, imports, loading a model, a
    command) prints ``interrupted`` and returns 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "eval"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handlers = {"train": functools.partial(cmd_train, extra=extra), "plot": cmd_plot,
                "eval": functools.partial(cmd_eval, extra=extra), "models": cmd_models, "generate": cmd_generate,
                "convert": cmd_convert, "export": cmd_export, "fill-mask": cmd_fill_mask, "bench": cmd_bench}
    try:
        return handlers[args.command](args)
    except UserError as exc:  # anything else is a bug and keeps its traceback (see the module docstring)
        print(f"perceivers {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
