"""Tiny Perceiver IO configurations and weight helpers shared by the tests.

Every model built from these has a few thousand parameters, so tests run in seconds on CPU.
"""

from __future__ import annotations

import torch

from perceivers import (
    DecoderConfig,
    EncoderConfig,
    ImagePreprocessorConfig,
    PerceiverIOConfig,
)


def tiny_encoder(**overrides) -> EncoderConfig:
    base = dict(num_latents=4, num_latent_channels=8, num_blocks=2, num_self_attends_per_block=2,
                num_cross_attend_heads=1, num_self_attend_heads=2)
    base.update(overrides)
    return EncoderConfig(**base)


def tiny_decoder(type: str = "classification", **overrides) -> DecoderConfig:
    if type == "classification":
        base = dict(type=type, num_outputs=5, num_query_channels=8)
    elif type == "projection":
        base = dict(type=type, num_outputs=5)
    else:
        base = dict(type=type, num_outputs=3, output_index_dims=(6,), position_encoding="fourier", num_bands=2)
    base.update(overrides)
    return DecoderConfig(**base)


def tiny_prep(prep_type: str = "pixels", **overrides) -> ImagePreprocessorConfig:
    base = dict(image_size=(8, 8), in_channels=3, prep_type=prep_type, num_channels=6, num_bands=2,
                position_encoding="fourier")
    if prep_type == "conv":
        base["spatial_downsample"] = 4
    elif prep_type == "patches":
        base["spatial_downsample"] = 2
    else:
        base["spatial_downsample"] = 1
    base.update(overrides)
    return ImagePreprocessorConfig(**base)


def tiny_config(*, prep: ImagePreprocessorConfig | None = None, input_channels: int | None = 5,
                encoder: EncoderConfig | None = None, decoder: DecoderConfig | None = None,
                activation: str = "gelu_tanh") -> PerceiverIOConfig:
    """A tiny token model (``input_channels``) or, with ``prep``, a tiny image model."""
    return PerceiverIOConfig(
        preprocessor=prep,
        input_channels=None if prep is not None else input_channels,
        encoder=encoder or tiny_encoder(),
        decoder=decoder or tiny_decoder(),
        activation=activation,
    )


def randomize_(module: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Overwrite every parameter (biases, LayerNorm affines and zero-initialised heads included) with
    random values so that no term of a computation is trivially zero or one."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
    return module


def official_haiku_tree(model: torch.nn.Module) -> dict:
    """``model``'s own weights under the official Haiku module names and layouts (Linear ``w [in, out]``),
    as ``perceivers convert haiku`` reads them: ``{module: {param: numpy array}}``."""
    from perceivers.converters import haiku as hk

    state = model.state_dict()
    tree: dict = {}
    for module, ours, kind in hk.model_rows(model.config):
        for param, suffix in hk._KIND_PARAMS[kind].items():
            value = state[f"{ours}.{suffix}" if suffix else ours].numpy()
            tree.setdefault(module, {})[param] = value.T.copy() if (kind, param) == ("linear", "w") else value
    return tree


def float_tensors(out) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (a tensor, or dicts/tuples/lists of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for v in out.values() for t in float_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in float_tensors(v)]
    return []
