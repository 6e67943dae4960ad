"""Export a model to ONNX (``perceivers export onnx MODEL_DIR OUT.onnx``).

Uses ``torch.onnx.export``'s TorchScript exporter (``dynamo=False``) at opset :data:`OPSET`: it traces one
forward pass of the model on its ``example_inputs()`` and exports SDPA attention as plain ONNX ops (MatMul,
Softmax). The dynamo exporter also works for the single-tensor heads but takes 10-40 s per tiny model and stops on
the text preprocessor's token-id range check; the traced graph is the same computation.

Inputs and outputs are named after ``forward``'s arguments and results: a tensor argument keeps its name
(``inputs``, ``input_ids``, ``input_mask``, ``frames``); a dict argument becomes one input per key
(``inputs.image``, ``inputs.label``); a tensor result is ``output``, a dict of dicts is flattened the same way
(``input_reconstruction.image``, ``latents.image``). Axis 0 of every input and output is dynamic (``batch``). The
byte length of the text models (MLM and text classifier; axis 1 of ``input_ids`` / ``input_mask``, ``length``) is
dynamic up to the model's ``max_seq_len`` (its position table); other input sizes (image size, frames, HiP
modality lengths) are fixed by the position encodings and group plans they were traced with.

The multimodal autoencoder takes every modality and its explicit ``mask`` (True = replaced by the mask token);
all modalities are required in the graph.

Not supported, with a :class:`~perceivers.core.errors.ConfigError`: Perceiver AR (causal generation needs a
cache the graph does not carry), random masking (``mask_probs`` without an explicit mask: the export checks that
the traced path gives the model's outputs), optional arguments (``query_mask``, ``subsampled_output_points``,
``mask_probs``, ``generator``), models of 2 GiB or more (ONNX's protobuf limit), and non-float32 weights. The file is written atomically (:func:`perceivers.core.files.atomic_write`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perceivers.core.errors import ConfigError
from perceivers.core.files import atomic_write
from perceivers.core.validation import check_int, fail
from perceivers.models.perceiver_io import PerceiverIOMultimodal

#: The ONNX opset written (the TorchScript exporter's tested range ends at 20; 17 has LayerNormalization).
OPSET = 17
#: Model classes the exporter refuses, with the reason.
UNSUPPORTED = {
    "PerceiverAR": "Perceiver AR decodes with a key/value cache that an ONNX graph does not carry",
}
_MAX_BYTES = 2 * 1024**3


def flatten_inputs(kwargs: Mapping[str, Any]) -> dict[str, Tensor]:
    """``forward`` keyword arguments -> ``{name: tensor}``; a dict argument ``a`` gives ``a.key`` entries."""
    flat: dict[str, Tensor] = {}
    for name, value in kwargs.items():
        if isinstance(value, Mapping):
            flat.update({f"{name}.{key}": v for key, v in value.items()})
        else:
            flat[name] = value
    return flat


def _nest(names: list[str], tensors: tuple[Tensor, ...]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name, x in zip(names, tensors, strict=True):
        if "." in name:
            outer, inner = name.split(".", 1)
            kwargs.setdefault(outer, {})[inner] = x
        else:
            kwargs[name] = x
    return kwargs


def flatten_outputs(out: Tensor | Mapping[str, Any], prefix: str = "") -> dict[str, Tensor]:
    """A tensor -> ``{"output": out}``; nested dicts -> ``{"a.b": tensor}`` in sorted key order."""
    if isinstance(out, Tensor):
        return {prefix or "output": out}
    flat: dict[str, Tensor] = {}
    for key in sorted(out):
        flat.update(flatten_outputs(out[key], f"{prefix}.{key}" if prefix else key))
    return flat


class _Flat(nn.Module):
    """``model`` with positional tensor inputs and a tuple of tensor outputs (what the exporter traces).

    The multimodal autoencoder is called through its parts (preprocessor with the explicit ``mask``, encoder,
    ``forward_head``): its ``forward`` first checks the inputs with Python values (batch sizes as a set) that a
    trace cannot carry. :func:`export_onnx` checks that both paths agree on the example inputs."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        kwargs = _nest(self.names, tensors)
        if isinstance(self.model, PerceiverIOMultimodal):
            tokens, _, _ = self.model.preprocessor(kwargs["inputs"], mask=kwargs.get("mask"))
            out = self.model.forward_head(self.model.encoder(tokens))
        else:
            out = self.model(**kwargs)
        return tuple(flatten_outputs(out).values())


def check_exportable(model: nn.Module) -> None:
    """``ConfigError`` naming the reason if :func:`export_onnx` cannot export ``model``."""
    name = type(model).__name__
    if name in UNSUPPORTED:
        raise ConfigError(f"cannot export a {name} to ONNX: {UNSUPPORTED[name]}; supported: Perceiver IO "
                          f"classifiers, MLM and text classifier, flow, audio, multimodal, and HiP")
    if not hasattr(model, "example_inputs"):
        raise ConfigError(f"cannot export a {name} to ONNX: expected a perceivers model")
    params = list(model.parameters())
    bad = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if bad:
        raise ConfigError(f"cannot export a {name} to ONNX: weights must be float32, got {bad}")
    if any(p.is_meta for p in params):
        raise ConfigError(f"cannot export a {name} to ONNX: its weights are on the meta device")
    size = sum(p.numel() * p.element_size() for p in params)
    if size >= _MAX_BYTES:
        raise ConfigError(f"cannot export a {name} to ONNX: its weights take {size / 1024**3:.1f} GiB, ONNX files "
                          "hold less than 2 GiB")


def dynamic_axes(model: nn.Module, input_names: list[str], output_names: list[str]) -> dict[str, dict[int, str]]:
    """Axis 0 of everything is ``batch``; the text models' axis 1 (bytes) is ``length`` too."""
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    config = getattr(model, "config", None)
    if getattr(config, "preprocessor_type", None) == "text":
        for name in ("input_ids", "input_mask"):
            axes[name][1] = "length"
        if getattr(config, "is_mlm", False):
            axes["output"][1] = "length"
    return axes


def export_onnx(model: nn.Module, out: str | os.PathLike, *, opset: int = OPSET, batch_size: int = 2) -> Path:
    """Write ``model`` (moved to the CPU, eval mode) as the ONNX file ``out`` (see the module docstring for the
    names, dynamic axes and unsupported cases). Returns the path."""
    check_int("opset", opset, minimum=14)
    if opset > 20:
        fail("opset", opset, "an ONNX opset from 14 to 20 (the TorchScript exporter's range)")
    check_int("batch_size", batch_size)
    check_exportable(model)
    model = model.to("cpu").eval()
    kwargs = model.example_inputs(batch_size, generator=torch.Generator().manual_seed(0))
    inputs = flatten_inputs(kwargs)
    names = list(inputs)
    flat = _Flat(model, names).eval()
    with torch.no_grad():
        expected = flatten_outputs(model(**kwargs))
        traced_path = flat(*inputs.values())
    if not all(torch.equal(a, b) for a, b in zip(expected.values(), traced_path, strict=True)):
        raise ConfigError(f"cannot export this {type(model).__name__} to ONNX: its outputs depend on random masking "
                          "(give every masked modality a mask token, or export a model without mask_probs)")
    output_names = list(expected)
    out = Path(out)

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():  # tracer warnings about Python values in checks
            warnings.simplefilter("ignore")
            torch.onnx.export(flat, tuple(inputs.values()), tmp, dynamo=False, opset_version=opset,
                              input_names=names, output_names=output_names,
                              dynamic_axes=dynamic_axes(model, names, output_names))

    atomic_write(out, write)
    return out
