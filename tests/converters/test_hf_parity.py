"""Numerical parity with HF ``transformers`` ``PerceiverForImageClassificationFourier``.

A small random-weight HF model is mapped with :func:`hf_to_perceivers_state_dict`, loaded strictly
into the equivalent :class:`PerceiverIO`, and both must give the same logits (float32, CPU).
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceivers import (  # noqa: E402
    DecoderConfig,
    EncoderConfig,
    ImagePreprocessorConfig,
    PerceiverIO,
    PerceiverIOConfig,
)
from perceivers.converters.hf_keys import hf_to_perceivers_state_dict  # noqa: E402

TOL = 1e-5
IMAGE_HW = (12, 20)  # non-square, so a transposed position grid would be caught
D_LATENTS, NUM_LATENTS, NUM_BLOCKS, SELF_PER_BLOCK, NUM_LABELS = 64, 16, 2, 2, 7

# HF activation name -> ours.
HF_TO_OURS_ACT = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _hf_model(hidden_act: str, seed: int = 0):
    config = transformers.PerceiverConfig(
        d_latents=D_LATENTS, num_latents=NUM_LATENTS, num_blocks=NUM_BLOCKS,
        num_self_attends_per_block=SELF_PER_BLOCK, num_self_attention_heads=4, num_cross_attention_heads=1,
        image_size=IMAGE_HW[0], num_labels=NUM_LABELS, hidden_act=hidden_act, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = transformers.PerceiverForImageClassificationFourier(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # Every tensor (LayerNorm weights/biases, latents, decoder query included) gets a non-trivial
        # random value so that any mis-mapped or mis-used parameter changes the logits.
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _hf_fourier_kwargs(hf_model) -> tuple[int, tuple[int, int]]:
    """``(num_bands, max_resolution)`` as the HF model actually built its Fourier image encoding."""
    enc = hf_model.perceiver.input_preprocessor.position_embeddings
    assert enc.concat_pos and not enc.sine_only
    return enc.num_bands, tuple(enc.max_resolution)


def _our_model(hf_model, activation: str) -> PerceiverIO:
    num_bands, max_resolution = _hf_fourier_kwargs(hf_model)  # (64, (224, 224)), hard-coded by HF
    cfg = PerceiverIOConfig(
        preprocessor=ImagePreprocessorConfig(
            image_size=IMAGE_HW, in_channels=3, prep_type="pixels", spatial_downsample=1,
            position_encoding="fourier", num_bands=num_bands, max_resolution=max_resolution,
            concat_pos=True, sine_only=False,
        ),
        encoder=EncoderConfig(
            num_latents=NUM_LATENTS, num_latent_channels=D_LATENTS, num_blocks=NUM_BLOCKS,
            num_self_attends_per_block=SELF_PER_BLOCK, num_cross_attend_heads=1, num_self_attend_heads=4,
        ),
        decoder=DecoderConfig(
            type="classification", num_outputs=NUM_LABELS, num_query_channels=D_LATENTS, use_query_residual=True,
        ),
        activation=activation,
    )
    model = PerceiverIO(cfg).eval()
    state = hf_to_perceivers_state_dict(hf_model.state_dict(), num_self_attends_per_block=SELF_PER_BLOCK)
    model.load_state_dict(state, strict=True)
    return model


def _images() -> torch.Tensor:
    return torch.randn(3, 3, *IMAGE_HW, generator=torch.Generator().manual_seed(123))


def _max_logit_diff(hf_model, ours: PerceiverIO) -> float:
    x = _images()
    with torch.no_grad():
        hf_logits = hf_model(inputs=x).logits
        our_logits = ours(x)
    assert hf_logits.shape == our_logits.shape == (x.shape[0], NUM_LABELS)
    assert hf_logits.abs().max() > 0.1  # not a degenerate, near-constant output
    return (hf_logits - our_logits).abs().max().item()


@pytest.fixture(scope="module")
def hf_models():
    return {act: _hf_model(act) for act in HF_TO_OURS_ACT}


@pytest.mark.parametrize("hf_act", list(HF_TO_OURS_ACT))
def test_logits_match_hf(hf_models, hf_act):
    hf_model = hf_models[hf_act]
    diff = _max_logit_diff(hf_model, _our_model(hf_model, HF_TO_OURS_ACT[hf_act]))
    assert diff <= TOL, f"max |logit diff| {diff:.3e} > {TOL} ({hf_act})"


def test_gelu_mismatch_is_detected(hf_models):
    """tanh-GELU HF weights run with our exact GELU must differ, so the parity test can fail."""
    diff = _max_logit_diff(hf_models["gelu_pytorch_tanh"], _our_model(hf_models["gelu_pytorch_tanh"], "gelu"))
    assert diff > 1e-7
    assert diff > TOL, f"tanh vs exact GELU gives only {diff:.3e}, below the parity tolerance"


def test_missing_key_raises(hf_models):
    state = dict(hf_models["gelu"].state_dict())
    del state["perceiver.encoder.self_attends.1.mlp.dense2.bias"]
    with pytest.raises(ValueError, match=r"perceiver\.encoder\.self_attends\.1\.mlp\.dense2\.bias"):
        hf_to_perceivers_state_dict(state, num_self_attends_per_block=SELF_PER_BLOCK)


def test_unexpected_key_raises(hf_models):
    state = dict(hf_models["gelu"].state_dict())
    state["perceiver.encoder.self_attends.2.mlp.dense1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected[\s\S]*perceiver\.encoder\.self_attends\.2\.mlp\.dense1\.weight"):
        hf_to_perceivers_state_dict(state, num_self_attends_per_block=SELF_PER_BLOCK)


def test_wrong_layer_count_raises(hf_models):
    state = hf_models["gelu"].state_dict()
    with pytest.raises(ValueError, match="self_attends.2"):
        hf_to_perceivers_state_dict(state, num_self_attends_per_block=SELF_PER_BLOCK + 1)
    with pytest.raises(ValueError, match="unexpected"):
        hf_to_perceivers_state_dict(state, num_self_attends_per_block=SELF_PER_BLOCK - 1)
