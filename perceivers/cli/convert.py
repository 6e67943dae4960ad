"""``perceivers convert``: foreign checkpoints into our folder format, and ours out to other formats."""

from __future__ import annotations

import argparse

from perceivers.cli.common import user_input
from perceivers.cli.convert_official import (
    OFFICIAL,
    add_official_parsers,
    cmd_convert_official,
)


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert official / Hugging Face checkpoints (to and from our folder format)",
                       description="Convert foreign checkpoints into a perceivers folder (config.json + "
                                   "model.safetensors).")
    conv = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    h = conv.add_parser("haiku", help="an official DeepMind Haiku parameter file (.pystate / .pickle)",
                        description="Read an official Haiku parameter pickle with a restricted unpickler (dicts, "
                                    "numpy arrays and Haiku FlatMapping only) and write our folder. ImageNet "
                                    "classifiers, the language MLM, optical flow and the multimodal autoencoder of "
                                    "any size are recognised: the kind and every size the file fixes are read from "
                                    "it; heads and blocks (not stored in the file) take the official defaults.")
    h.add_argument("params", help="path or URL (downloaded once to ~/.cache/perceivers) of the official parameter file")
    h.add_argument("out", help="output folder")
    h.add_argument("--model", default=None, help="registered model name (default: inferred from the parameters)")
    h.add_argument("--state", default=None, metavar="FILE",
                   help="a separate state file (BatchNorm statistics) merged into the parameters; path or URL")
    h.add_argument("--heads", type=int, default=None, metavar="N",
                   help="self-attention heads of the encoder (not stored in the file; default: the official count)")
    h.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="haiku_set",
                   help="override a config field the file does not fix, dotted and repeatable, e.g. "
                        "--set encoder.num_blocks=4 --set decoder.num_heads=2 (VALUE is read as JSON, else a string)")
    f = conv.add_parser("hf", help="a Hugging Face transformers Perceiver folder or Hub id (owner/name[@revision])",
                        description="Convert a transformers Perceiver folder (ImageClassificationFourier, MaskedLM, "
                                    "SequenceClassification, ImageClassificationLearned, ImageClassificationConvProcessing, "
                                    "OpticalFlow, MultimodalAutoencoding) to our folder. Default: "
                                    "official semantics (tanh GELU, no query residual in the learned-position "
                                    "decoder, attention dropout 0, flow in pixels); --hf-compat reproduces HF's outputs. "
                                    "SRC may be a Hub id such as deepmind/vision-perceiver-fourier, fetched with "
                                    "huggingface_hub (pip install 'perceivers[hub]') into the Hub cache (HF_HUB_CACHE / "
                                    "HF_HOME); HF_HUB_OFFLINE=1 serves it from that cache without downloading.")
    f.add_argument("src", help="HF model folder, or Hub id owner/name[@revision]")
    f.add_argument("out", help="output folder")
    f.add_argument("--revision", default=None, help="Hub branch, tag or commit of a Hub id SRC (default: main)")
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
    add_official_parsers(conv)
    add_port_parsers(conv)


def cmd_convert(args: argparse.Namespace) -> int:
    # A converter reads a foreign file and maps its keys strictly: its errors (a missing file, an unsupported head,
    # missing or unexpected keys) are about that file.
    if args.source in OFFICIAL:
        return cmd_convert_official(args)
    if args.source in PORTS:
        return cmd_convert_port(args)
    if args.source == "hf":
        from perceivers.converters.hub_fetch import from_pretrained

        with user_input():  # a local folder or a Hub id; a perceivers-format one is copied as it is
            model = from_pretrained(args.src, revision=args.revision, hf_compat=args.hf_compat,
                                    undo_hf_kernel_transpose=args.undo_hf_kernel_transpose)
        with user_input("OUT"):
            out = model.save_pretrained(args.out)
        mode = "HF-compatible" if args.hf_compat else "official semantics"
        print(f"converted {args.src} ({model.num_parameters():,} parameters, {mode}) -> {out}")
        return 0
    if args.source == "to-hf":
        from perceivers.converters.hf import convert_to_hf_folder

        with user_input():
            out = convert_to_hf_folder(args.src, args.out)
        print(f"converted {args.src} -> {out} (transformers format)")
        return 0
    from perceivers.converters.haiku import convert_haiku_file

    overrides = haiku_overrides(args.haiku_set, args.heads)
    with user_input():
        model = convert_haiku_file(args.params, args.model, state=args.state, **overrides)
    with user_input("OUT"):
        out = model.save_pretrained(args.out)
    print(f"converted {args.params} ({model.num_parameters():,} parameters) -> {out}")
    return 0


def haiku_overrides(items: list[str], heads: int | None) -> dict:
    """``--set a.b=VALUE`` (VALUE as JSON, else a string) and ``--heads N`` as nested ``create_model`` overrides."""
    import json

    from perceivers.core.validation import check_optional_int, fail

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            fail("--set", item, "KEY=VALUE with a dotted config key, e.g. encoder.num_blocks=4")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                fail("--set", item, f"a key that does not extend the value already set for {part!r}")
        node[leaf] = value
    check_optional_int("--heads", heads)
    if heads is not None:
        out.setdefault("encoder", {})["num_self_attend_heads"] = heads
    return out


# ----------------------------------------------------------------------------- the other PyTorch ports

#: ``perceivers convert SOURCE``: (peer, the models it converts).
PORTS = {
    "lucidrains": ("lucidrains' perceiver-pytorch", "Perceiver or PerceiverIO"),
    "krasserm": ("krasserm's perceiver-io", "Perceiver IO image classifier or MLM, or Perceiver AR language model"),
}


def add_port_parsers(conv: argparse._SubParsersAction) -> None:
    """``convert lucidrains`` / ``convert krasserm``: a peer model's ``state_dict()`` file and its settings."""
    for name, (peer, models) in PORTS.items():
        c = conv.add_parser(name, help=f"a {peer} state dict ({models})",
                            description=f"Convert torch.save(model.state_dict(), FILE) of {peer} ({models}) into "
                                        f"our folder, with output parity. The file is read with "
                                        f"torch.load(weights_only=True). Sizes come from the tensors' shapes; the "
                                        f"constructor arguments they do not fix (heads, ...) from --config. See "
                                        f"docs/checkpoints.md, 'Other PyTorch ports'.")
        c.add_argument("state_dict", help="file written by torch.save(model.state_dict(), FILE)")
        c.add_argument("out", help="output folder")
        c.add_argument("--config", default=None, metavar="JSON|FILE",
                       help="the peer's constructor arguments as a JSON object, inline or in a file, e.g. "
                            "'{\"cross_heads\": 1, \"latent_heads\": 8}'")


def cmd_convert_port(args: argparse.Namespace) -> int:
    from perceivers.converters.ports import read_settings

    if args.source == "lucidrains":
        from perceivers.converters.lucidrains import convert_lucidrains_file as convert
    else:
        from perceivers.converters.krasserm import convert_krasserm_file as convert
    peer = PORTS[args.source][0]
    with user_input():  # read_settings names --config itself
        settings = read_settings(args.config)
    with user_input():
        model = convert(args.state_dict, settings)
    with user_input("OUT"):
        out = model.save_pretrained(args.out)
    print(f"converted {args.state_dict} ({peer}, {model.num_parameters():,} parameters) -> {out}")
    return 0
