"""``perceivers export``: our model folders out to other runtimes (ONNX)."""

from __future__ import annotations

import argparse

from perceivers.cli.common import user_input


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model folder to another runtime's format (ONNX)",
                       description="Export a perceivers model folder (config.json + model.safetensors) for another "
                                   "runtime.")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    o = fmt.add_parser("onnx", help="an ONNX file for onnxruntime and other ONNX runtimes",
                       description="Trace the model on its example inputs and write an ONNX file (opset 17 by "
                                   "default; needs onnx: pip install 'perceivers[onnx]'). Batch is dynamic; the byte "
                                   "length of text models is dynamic up to max_seq_len. Perceiver IO classifiers, "
                                   "MLM, text classifier, flow, audio, multimodal (explicit masks) and HiP; not "
                                   "Perceiver AR.")
    o.add_argument("model_dir", help="our model folder (or a Hub id owner/name)")
    o.add_argument("out", help="output .onnx file (written atomically)")
    o.add_argument("--opset", type=int, default=None, help="ONNX opset, 14-20 (default 17)")


def cmd_export(args: argparse.Namespace) -> int:
    from perceivers.converters.hub_fetch import from_pretrained
    from perceivers.converters.onnx import OPSET, check_exportable, export_onnx

    opset = OPSET if args.opset is None else args.opset
    with user_input("MODEL_DIR"):
        model = from_pretrained(args.model_dir)
    check_exportable(model)
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        from perceivers.core.errors import ConfigError

        raise ConfigError("export onnx needs the onnx package: pip install 'perceivers[onnx]'") from None
    with user_input("OUT"):
        out = export_onnx(model, args.out, opset=opset)
    print(f"exported {args.model_dir} ({type(model).__name__}, opset {opset}) -> {out}")
    return 0
