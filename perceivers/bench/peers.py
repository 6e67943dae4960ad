"""The benchmarked implementations, each built at one :class:`~perceivers.bench.spec.BenchSpec`.

:func:`build` returns ``(model, forward, flops_options, notes)``: ``forward(x: (B, M, C_in)) -> logits (B,
num_classes)``; ``flops_options`` are the :func:`~perceivers.bench.spec.matmul_flops` options that describe the
implementation's own matmuls; ``notes`` say where it departs from the spec. The peers are optional packages
(``pip install 'perceivers[bench]'``; krasserm's ``perceiver-io`` pins an old torch: ``pip install --no-deps
perceiver-io einops``, which is 0.6.0 on Python 3.11; 0.11.0 needs ``--ignore-requires-python``; both run); a
missing one raises :class:`PeerUnavailable`.

- ``ours``: :class:`~perceivers.models.perceiver_io.model.PerceiverIO` with a classification decoder.
- ``transformers``: ``PerceiverModel`` with ``PerceiverClassificationDecoder`` (exact GELU, its default;
  attention dropout set to 0).
- ``lucidrains``: ``perceiver_pytorch.PerceiverIO`` (GEGLU MLPs of widening 4 always, decoder without MLP:
  ``decoder_ff=False``, decoder attention ``input_channels`` wide), so its parameter count differs; the
  classification query is a trainable parameter added to it.
- ``krasserm``: ``perceiver.model.core`` ``PerceiverEncoder`` / ``PerceiverDecoder`` (perceiver-io 0.6 or 0.11)
  with the official widths (cross-attention q/k 64, decoder q/k/v 512); fairscale, imported by that module for
  activation checkpointing only, is replaced by a stub when it is not installed.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from perceivers.bench.spec import BenchSpec

#: Implementations of the default run, in table order.
IMPLS = ("ours", "transformers", "lucidrains", "krasserm")
#: Every implementation ``--impls`` accepts: also ``ours-gelu``, ours with the exact (erf) GELU that transformers
#: and krasserm use instead of the official tanh approximation (the same model otherwise).
ALL_IMPLS = (*IMPLS, "ours-gelu")

Forward = Callable[[torch.Tensor], torch.Tensor]


class PeerUnavailable(RuntimeError):
    """A peer package is not installed or does not run here (the message says which and how to install it)."""


def build(impl: str, spec: BenchSpec) -> tuple[nn.Module, Forward, dict[str, Any], list[str]]:
    """The model ``impl`` at ``spec`` (seed 0), its forward, FLOP options and notes."""
    builders = {"ours": _ours, "ours-gelu": lambda s: _ours(s, activation="gelu"), "transformers": _transformers,
                "lucidrains": _lucidrains, "krasserm": _krasserm}
    if impl not in builders:
        raise ValueError(f"unknown implementation {impl!r}: expected one of {ALL_IMPLS}")
    torch.manual_seed(0)
    return builders[impl](spec)


def _ours(spec: BenchSpec, activation: str = "gelu_tanh"):
    from perceivers.decoders import DecoderConfig
    from perceivers.encoders import EncoderConfig
    from perceivers.models.perceiver_io.config import PerceiverIOConfig
    from perceivers.models.perceiver_io.model import PerceiverIO

    enc = EncoderConfig(num_latents=spec.num_latents, num_latent_channels=spec.latent_channels, num_blocks=1,
                        num_self_attends_per_block=spec.num_self_attends, num_cross_attend_heads=spec.cross_heads,
                        num_self_attend_heads=spec.self_heads, cross_attend_widening_factor=spec.cross_widening,
                        self_attend_widening_factor=spec.self_widening)
    dec = DecoderConfig(type="classification", num_outputs=spec.num_classes, num_query_channels=spec.query_channels,
                        widening_factor=spec.decoder_widening, use_query_residual=True)
    model = PerceiverIO(PerceiverIOConfig(input_channels=spec.input_channels, encoder=enc, decoder=dec,
                                          activation=activation))
    note = "tanh GELU (official)" if activation == "gelu_tanh" else "exact GELU (as transformers and krasserm)"
    return model, lambda x: model(x), {}, [note]


def _transformers(spec: BenchSpec):
    try:
        from transformers import PerceiverConfig, PerceiverModel
        from transformers.models.perceiver.modeling_perceiver import (
            PerceiverClassificationDecoder,
        )
    except ImportError as exc:
        raise PeerUnavailable(f"transformers is not installed ({exc}): pip install transformers") from exc
    cfg = PerceiverConfig(num_latents=spec.num_latents, d_latents=spec.latent_channels, d_model=spec.input_channels,
                          num_blocks=1, num_self_attends_per_block=spec.num_self_attends,
                          num_self_attention_heads=spec.self_heads, num_cross_attention_heads=spec.cross_heads,
                          cross_attention_widening_factor=spec.cross_widening,
                          self_attention_widening_factor=spec.self_widening, num_labels=spec.num_classes,
                          attention_probs_dropout_prob=0.0)
    if spec.decoder_widening != 1:
        raise PeerUnavailable("transformers' classification decoder has MLP widening 1 only")
    decoder = PerceiverClassificationDecoder(
        cfg, num_channels=spec.query_channels, use_query_residual=True,
        trainable_position_encoding_kwargs={"num_channels": spec.query_channels, "index_dims": 1})
    model = PerceiverModel(cfg, decoder=decoder)
    return model, lambda x: model(inputs=x).logits, {}, ["exact GELU (its default)"]


def _lucidrains(spec: BenchSpec):
    try:
        from perceiver_pytorch import PerceiverIO
    except ImportError as exc:
        raise PeerUnavailable(f"perceiver-pytorch is not installed ({exc}): pip install perceiver-pytorch "
                              "einops") from exc
    head = spec.latent_channels // spec.self_heads
    model = PerceiverIO(depth=spec.num_self_attends, dim=spec.input_channels, queries_dim=spec.query_channels,
                        logits_dim=spec.num_classes, num_latents=spec.num_latents, latent_dim=spec.latent_channels,
                        cross_heads=spec.cross_heads, latent_heads=spec.self_heads,
                        cross_dim_head=spec.input_channels // spec.cross_heads, latent_dim_head=head,
                        decoder_ff=False)
    query = nn.Parameter(torch.randn(1, spec.query_channels) * 0.02)
    model.register_parameter("bench_query", query)  # the trainable classification query, as in the others

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x, queries=model.bench_query)[:, 0]

    options = {"glu": True, "mlp_widening": 4, "decoder_qk": spec.input_channels, "decoder_mlp": False}
    return model, forward, options, ["GEGLU MLPs of widening 4, no decoder MLP",
                                     f"decoder attention {spec.input_channels} wide (ours: {spec.latent_channels})"]


def _stub_fairscale() -> bool:
    """Install a ``fairscale.nn.checkpoint_wrapper`` stub when fairscale is missing (perceiver-io imports it for
    activation checkpointing, which the bench does not use); True when the stub was installed."""
    try:
        import fairscale.nn  # noqa: F401
        return False
    except ImportError:
        pass
    package, nn_module = types.ModuleType("fairscale"), types.ModuleType("fairscale.nn")

    def checkpoint_wrapper(module, *args, **kwargs):
        raise RuntimeError("fairscale stub: activation checkpointing is not available in the bench")

    nn_module.checkpoint_wrapper = checkpoint_wrapper
    package.nn = nn_module
    sys.modules.setdefault("fairscale", package)
    sys.modules.setdefault("fairscale.nn", nn_module)
    return True


def _import_krasserm() -> tuple[types.ModuleType, Any, Any, str]:
    """krasserm's ``modules``, the classification output adapter class, the query provider class (None on 0.6, whose
    adapter holds the query) and the installed version. Its ``model.core`` package imports PyTorch Lightning and
    torchmetrics for training classes only: absent, they are stubbed while it loads."""
    from importlib import import_module, metadata
    from importlib.util import find_spec

    stubs = {name: types.ModuleType(name) for name in ("pytorch_lightning", "pytorch_lightning.loggers",
                                                       "torchmetrics")}
    stubs["pytorch_lightning"].LightningModule = nn.Module
    stubs["pytorch_lightning.loggers"].TensorBoardLogger = object
    added = [k for k in stubs if k not in sys.modules and find_spec(k.split(".")[0]) is None]
    sys.modules.update({k: stubs[k] for k in added})
    try:
        modules = import_module("perceiver.model.core.modules")
        if hasattr(modules, "TrainableQueryProvider"):  # 0.11
            adapter = import_module("perceiver.model.core.adapter")
            return modules, adapter.ClassificationOutputAdapter, adapter.TrainableQueryProvider, metadata.version(
                "perceiver-io")
        classifier = import_module("perceiver.model.core.classifier")  # 0.6
        return modules, classifier.ClassificationOutputAdapter, None, metadata.version("perceiver-io")
    finally:
        for k in added:
            sys.modules.pop(k, None)


def _krasserm(spec: BenchSpec):
    stubbed = _stub_fairscale()
    try:
        modules, output_adapter, query_provider, version = _import_krasserm()
    except (ImportError, AttributeError) as exc:
        raise PeerUnavailable(f"krasserm perceiver-io is not importable ({exc}): pip install --no-deps "
                              "perceiver-io einops") from exc

    class TokenAdapter(modules.InputAdapter):
        """Tokens ``(B, M, C_in)`` as they are (the bench feeds tokens, no positions)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    encoder = modules.PerceiverEncoder(
        TokenAdapter(num_input_channels=spec.input_channels), num_latents=spec.num_latents,
        num_latent_channels=spec.latent_channels, num_cross_attention_heads=spec.cross_heads,
        num_cross_attention_qk_channels=spec.input_channels, num_cross_attention_v_channels=spec.input_channels,
        cross_attention_widening_factor=spec.cross_widening, num_self_attention_heads=spec.self_heads,
        num_self_attention_layers_per_block=spec.num_self_attends, num_self_attention_blocks=1,
        self_attention_widening_factor=spec.self_widening)
    head = {"num_latent_channels": spec.latent_channels, "num_cross_attention_heads": spec.cross_heads,
            "num_cross_attention_qk_channels": spec.latent_channels,
            "num_cross_attention_v_channels": spec.latent_channels,
            "cross_attention_widening_factor": spec.decoder_widening, "cross_attention_residual": True}
    if query_provider is None:  # 0.6: the adapter holds the query
        adapter = output_adapter(num_classes=spec.num_classes, num_output_queries=1,
                                 num_output_query_channels=spec.query_channels)
        decoder = modules.PerceiverDecoder(adapter, **head)
    else:
        adapter = output_adapter(num_classes=spec.num_classes, num_output_query_channels=spec.query_channels)
        decoder = modules.PerceiverDecoder(adapter, query_provider(num_queries=1, num_query_channels=spec.query_channels),
                                           **head)
    model = modules.PerceiverIO(encoder, decoder)

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out if out.dim() == 2 else out[:, 0]

    notes = [f"perceiver-io {version}", "exact GELU (its default)"]
    return model, forward, {}, notes + (["fairscale stubbed (not installed)"] if stubbed else [])
