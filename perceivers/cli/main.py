"""The ``perceivers`` command line: ``train``, ``eval``, ``models``, ``convert``, ``generate``, ``fill-mask``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from perceivers import __version__

_TRAIN_FIELDS = {"epochs": int, "batch_size": int, "lr": float, "weight_decay": float, "seed": int,
                 "warmup_fraction": float, "label_smoothing": float, "grad_clip": float, "device": str}
_TEXT_TRAIN_FIELDS = ("steps", "batch_size", "lr", "weight_decay", "seed", "warmup_fraction", "grad_clip", "device")
_ONLY = {"digits": ("epochs", "label_smoothing", "max_shift"),
         "text": ("steps", "context", "latents", "channels", "layers", "heads", "eval_windows", "data_root", "include_tests")}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a recipe on its embedded data",
        description="Train a recipe, evaluate it on its fixed held-out split and save the model (config.json + "
                    "model.safetensors) and metrics.json under --out.",
)
    p.add_argument("recipe", choices=["digits", "text"],
                   help="digits: Perceiver IO on scikit-learn's 1,797 real 8x8 digits; text: byte-level Perceiver "
                        "AR on the Python standard library's sources")
    p.add_argument("--out", default=None, help="output folder (default: runs/RECIPE)")
    from perceivers.training.recipes import DigitsRecipe, TextRecipe

    defaults, text = DigitsRecipe(), TextRecipe()
    for name, typ in _TRAIN_FIELDS.items():
        shared = f", text default: {getattr(text.train, name)}" if name in _TEXT_TRAIN_FIELDS else " (digits only)"
        p.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None,
                       help=f"override {name} (digits default: {getattr(defaults.train, name)}{shared})")
    p.add_argument("--max-shift", type=int, default=None,
                   help=f"augmentation: random shift in pixels, 0 = off (digits default: {defaults.max_shift})")
    p.add_argument("--steps", type=int, default=None, help=f"text: training steps (default {text.train.steps})")
    p.add_argument("--context", type=int, default=None, help="text: context length M (default 1024)")
    p.add_argument("--latents", type=int, default=None, help="text: number of latents N (default 128)")
    p.add_argument("--channels", type=int, default=None, help="text: model width (default 192)")
    p.add_argument("--layers", type=int, default=None, help="text: self-attention layers (default 4)")
    p.add_argument("--heads", type=int, default=None, help="text: attention heads (default 6)")
    p.add_argument("--eval-windows", type=int, default=None,
                   help=f"text: fixed validation windows (default {text.eval_windows})")
    p.add_argument("--data-root", default=None, help="text: folder of *.py files (default: the Python stdlib)")
    p.add_argument("--include-tests", action="store_true", default=None, help="text: keep the stdlib test suites")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream text from a byte-level Perceiver AR checkpoint",
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
    p = sub.add_parser("eval", help="re-evaluate a saved model on a recipe's test split",
                       description="Load a model folder written by `perceivers train` and report test accuracy.")
    p.add_argument("recipe", choices=["digits"], help="which recipe's test split to use")
    p.add_argument("--checkpoint", required=True, help="model folder (config.json + model.safetensors)")
    p.add_argument("--device", default="cpu", help="torch device")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert official / Hugging Face checkpoints (to and from our folder format)",
                       description="Convert foreign checkpoints into a perceivers folder (config.json + "
                                   "model.safetensors).")
    conv = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    h = conv.add_parser("haiku", help="an official DeepMind Haiku parameter file (.pystate / .pickle)",
                        description="Read an official Haiku parameter pickle with a restricted unpickler (dicts, "
                                    "numpy arrays and Haiku FlatMapping only) and write our folder. ImageNet "
                                    "classifiers and the language MLM are recognised automatically.")
    h.add_argument("params", help="path of the official parameter file")
    h.add_argument("out", help="output folder")
    h.add_argument("--model", default=None, help="registered model name (default: inferred from the parameters)")
    f = conv.add_parser("hf", help="a Hugging Face transformers Perceiver folder (config.json + model.safetensors)",
                        description="Convert a transformers Perceiver folder (ImageClassificationFourier, MaskedLM, "
                                    "SequenceClassification, ImageClassificationLearned, ImageClassificationConvProcessing) to our folder. Default: "
                                    "official semantics (tanh GELU, no query residual in the learned-position "
                                    "decoder, attention dropout 0); --hf-compat reproduces HF's outputs.")
    f.add_argument("src", help="HF model folder")
    f.add_argument("out", help="output folder")
    f.add_argument("--hf-compat", action="store_true",
                   help="reproduce HF numbers: activation from hidden_act, learned decoder query residual, "
                        "attention_probs_dropout_prob from the HF config")
    f.add_argument("--undo-hf-kernel-transpose", action="store_true",
                   help="ImageClassificationConvProcessing only: swap the 7x7 kernel's spatial axes back, for the "
                        "HF Hub checkpoint deepmind/vision-perceiver-conv (HF's converter transposed them); not for "
                        "models created or trained with transformers")
    t = conv.add_parser("to-hf", help="our folder -> a Hugging Face transformers Perceiver folder",
                        description="Write config.json (HF field names, architectures) + model.safetensors loadable "
                                    "by transformers' from_pretrained.")
    t.add_argument("src", help="our model folder")
    t.add_argument("out", help="output HF folder")


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
    _add_convert(sub)
    _add_generate(sub)
    _add_fill_mask(sub)
    return parser


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def cmd_train(args: argparse.Namespace) -> int:
    from perceivers.training.recipes import RECIPES

    _set_threads(args.threads)
    for recipe_name, names in _ONLY.items():
        given = [n for n in names if getattr(args, n) is not None]
        if recipe_name != args.recipe and given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise ValueError(f"{flags} only appl{'ies' if len(given) == 1 else 'y'} to `train {recipe_name}`")
    recipe = RECIPES[args.recipe]()
    if args.recipe == "text":
        changes = {k: getattr(args, k) for k in _TEXT_TRAIN_FIELDS if getattr(args, k) is not None}
        fields = {"context": args.context, "num_latents": args.latents, "channels": args.channels,
                  "num_layers": args.layers, "num_heads": args.heads, "eval_windows": args.eval_windows, "data_root": args.data_root,
                  "include_tests": args.include_tests}
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **changes),
                                     **{k: v for k, v in fields.items() if v is not None})
        recipe.run(args.out or "runs/text", progress=not args.no_progress)
        return 0
    changes = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **changes))
    if args.max_shift is not None:
        if args.max_shift < 0:
            raise ValueError(f"--max-shift must be >= 0, got {args.max_shift}")
        recipe = dataclasses.replace(recipe, max_shift=args.max_shift)
    recipe.run(args.out or f"runs/{args.recipe}", progress=not args.no_progress)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import codecs

    import torch

    from perceivers.data.text import EOS_ID, VOCAB_SIZE, encode
    from perceivers.hub import from_pretrained
    from perceivers.models.perceiver_ar import PerceiverAR

    _set_threads(args.threads)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    model = from_pretrained(args.checkpoint, device=args.device)
    if not isinstance(model, PerceiverAR) or model.config.vocab_size != VOCAB_SIZE:
        raise ValueError(f"{args.checkpoint} is not a byte-level Perceiver AR checkpoint (vocab {VOCAB_SIZE})")
    prompt = encode(args.prompt, sos=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def stream(tokens: torch.Tensor) -> None:
        token = int(tokens[0])
        if token >= 3:
            sys.stdout.write(decoder.decode(bytes([token - 3])))
            sys.stdout.flush()

    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    model.generate([prompt], max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_token_id=EOS_ID,
                   generator=generator, streamer=stream)
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    sys.stdout.flush()
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from perceivers.generation.fill_mask import fill_mask
    from perceivers.hub import from_pretrained

    _set_threads(args.threads)
    model = from_pretrained(args.checkpoint, device=args.device)
    result = fill_mask(model, args.text, mask_token=args.mask_token, add_special_tokens=args.add_special_tokens,
                       device=args.device)
    print(result.text)
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


def cmd_convert(args: argparse.Namespace) -> int:
    if args.source == "hf":
        from perceivers.converters.hf import convert_hf_folder

        model = convert_hf_folder(args.src, hf_compat=args.hf_compat,
                                  undo_hf_kernel_transpose=args.undo_hf_kernel_transpose)
        out = model.save_pretrained(args.out)
        mode = "HF-compatible" if args.hf_compat else "official semantics"
        print(f"converted {args.src} ({model.num_parameters():,} parameters, {mode}) -> {out}")
        return 0
    if args.source == "to-hf":
        from perceivers.converters.hf import convert_to_hf_folder

        out = convert_to_hf_folder(args.src, args.out)
        print(f"converted {args.src} -> {out} (transformers format)")
        return 0
    from perceivers.converters.haiku import convert_haiku_file

    model = convert_haiku_file(args.params, args.model)
    out = model.save_pretrained(args.out)
    print(f"converted {args.params} ({model.num_parameters():,} parameters) -> {out}")
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
    handlers = {"train": cmd_train, "eval": cmd_eval, "models": cmd_models, "generate": cmd_generate,
                "convert": cmd_convert, "fill-mask": cmd_fill_mask}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"perceivers {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
