"""attention_maps: the recomputed cross-attention probabilities are the ones the SDPA layer uses (maps times the
values through the output projection give the layer's output), rows sum to 1, masks and chunks are handled, the
default forward pass never builds them, and bad arguments are user errors."""

from __future__ import annotations

import pytest
import torch
from testkit.models import randomize_, tiny_config, tiny_encoder
from testkit.perceiver_ar import make

import perceivers
from perceivers import create_model, get_config
from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.models import attention_maps as attention_maps_module
from perceivers.models.attention_maps import (
    attention_maps,
    cross_attention_probabilities,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def record_calls(model):
    """Forward hooks on every cross-attention module: a list of (module, x_q, x_kv, mask, output) per call."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append((module, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("mask"), output))

    blocks = [*model.encoder.cross_attends, getattr(model.decoder, "cross_attend", None)]
    handles = [b.attention.register_forward_hook(hook, with_kwargs=True) for b in blocks if b is not None]
    return calls, handles


def layer_output_from(probs, module, x_kv):
    """The attention layer's output rebuilt from ``probs (B, H, N, M)``: probs @ V per head, then o_proj."""
    b, h, n, m = probs.shape
    v = module.v_proj(x_kv).view(b, m, h, -1).transpose(1, 2)  # (B, H, M, Dv)
    return module.o_proj((probs @ v).transpose(1, 2).reshape(b, n, -1))


def check_against_layer(model, inputs, forward_kwargs):
    model.eval()
    calls, handles = record_calls(model)
    with torch.no_grad():
        model(inputs) if forward_kwargs is None else model(**forward_kwargs)
        for handle in handles:
            handle.remove()
        assert calls
        for module, x_q, x_kv, mask, output in calls:
            probs = cross_attention_probabilities(module, x_q, x_kv, mask)
            torch.testing.assert_close(layer_output_from(probs, module, x_kv), output, atol=2e-5, rtol=1e-4)
    return calls


def image_model():
    torch.manual_seed(0)
    config = get_config("perceiver-io-digits").debug_size()
    config = config.replace(encoder=config.encoder.replace(num_cross_attend_heads=2, cross_attend_qk_channels=8,
                                                           cross_attend_v_channels=8, dropout_prob=0.0))
    return randomize_(perceivers.PerceiverIO(config))


def test_image_maps_reproduce_the_layer_and_rows_sum_to_one():
    model = image_model()
    images = torch.rand(3, 1, 4, 4)
    calls = check_against_layer(model, images, None)
    model.train()
    maps = attention_maps(model, images, examples=[2, 0])
    assert model.training  # mode restored
    (enc_module, enc_q, enc_kv, _, _), (dec_module, dec_q, dec_kv, _, _) = calls
    assert set(maps) == {"encoder", "decoder"}
    assert maps["encoder"].shape == (2, 2, 8, 16)  # (E, H, latents, 4x4 pixels)
    assert maps["decoder"].shape == (2, 1, 1, 8)  # (E, H, one class query, latents)
    with torch.no_grad():
        for key, module, x_q, x_kv in (("encoder", enc_module, enc_q, enc_kv), ("decoder", dec_module, dec_q, dec_kv)):
            expected = cross_attention_probabilities(module, x_q, x_kv)[[2, 0]]
            torch.testing.assert_close(maps[key], expected)
            torch.testing.assert_close(maps[key].sum(-1), torch.ones(maps[key].shape[:-1]))
    assert not any(b.attention._forward_pre_hooks for b in (*model.encoder.cross_attends, model.decoder.cross_attend))


def test_flow_maps_reproduce_the_layer_and_join_the_decoder_chunks():
    torch.manual_seed(0)
    model = randomize_(create_model("perceiver-io-flow-debug"), 0.3)
    frames = model.example_inputs(2, generator=torch.Generator().manual_seed(1))
    calls = check_against_layer(model, None, frames)
    assert len(calls) == 1 + 3  # the encoder, then 192 queries in chunks of 64
    maps = attention_maps(model, frames, examples=1)
    assert maps["encoder"].shape == (1, 1, 16, 12 * 16) and maps["decoder"].shape == (1, 1, 12 * 16, 16)
    with torch.no_grad():
        chunks = [cross_attention_probabilities(m, q, kv)[1:] for m, q, kv, _, _ in calls[1:]]
    torch.testing.assert_close(maps["decoder"], torch.cat(chunks, dim=2))
    assert "decoder" not in attention_maps(model, frames, decoder=False)


def test_masked_and_interleaved_token_model():
    torch.manual_seed(0)
    config = tiny_config(encoder=tiny_encoder(layout="interleaved", num_blocks=3, num_cross_attend_heads=2,
                                              cross_attend_qk_channels=4, cross_attend_v_channels=4))
    model = randomize_(perceivers.PerceiverIO(config))
    tokens = torch.randn(2, 6, 5)
    mask = torch.tensor([[True, True, False, True, False, True], [False] * 6])  # example 1 attends nothing
    check_against_layer(model, None, {"inputs": tokens, "input_mask": mask})
    maps = attention_maps(model, {"inputs": tokens, "input_mask": mask})
    assert set(maps) == {"encoder.0", "encoder.1", "encoder.2", "decoder"}
    first = maps["encoder.0"]
    assert first.shape == (2, 2, 4, 6)
    torch.testing.assert_close(first[0].sum(-1), torch.ones(2, 4))
    assert torch.all(first[0][..., ~mask[0]] == 0) and torch.all(first[1] == 0)  # masked keys, empty rows


def test_the_default_forward_never_recomputes(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the default forward pass built attention probabilities")

    model = image_model()
    monkeypatch.setattr(attention_maps_module, "cross_attention_probabilities", refuse)
    with torch.no_grad():
        model(torch.rand(2, 1, 4, 4))  # no hook, no recompute
    with pytest.raises(AssertionError, match="built attention probabilities"):
        attention_maps(model, torch.rand(2, 1, 4, 4))  # the opt-in path does use it...
    assert not model.encoder.cross_attends[0].attention._forward_pre_hooks  # ...and removes its hooks on failure


def test_bad_arguments_are_user_errors():
    model = image_model()
    images = torch.rand(2, 1, 4, 4)
    with pytest.raises(ConfigError, match=r"examples=5 is invalid: expected an index .* \[0, 2\)"):
        attention_maps(model, images, examples=5)
    with pytest.raises(ConfigError, match="examples"):
        attention_maps(model, images, examples=[])
    with pytest.raises(ConfigTypeError, match="model is a PerceiverAR: attention_maps reads the encoder"):
        attention_maps(make(), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ConfigTypeError, match="inputs must be a tensor or a mapping"):
        attention_maps(model, [images])
    assert perceivers.attention_maps is attention_maps
