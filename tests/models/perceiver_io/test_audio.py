"""Raw-waveform Perceiver IO classifier (AudioSet setting): count, shapes, patches + positions, masks, errors."""

from __future__ import annotations

import pytest
import torch

from perceivers import ModalityConfig, PerceiverIOConfig, from_pretrained
from perceivers.layers.position import fourier_features, grid_positions
from perceivers.models import create_model, get_config

pytestmark = pytest.mark.usefixtures("one_thread")

DEBUG = "perceiver-io-audioset-debug"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(DEBUG).eval()


def test_registered_config_and_counts():
    m = create_model("perceiver-io-audioset", device="meta")
    assert m.num_parameters() == 24_343_318
    c = m.config
    assert (c.preprocessor.num_samples, c.preprocessor.samples_per_patch, c.preprocessor.patch_grid) == \
        (61_440, 128, (480,))
    assert c.preprocessor.input_channels == 128 + 129 and c.decoder.num_outputs == 527
    assert (c.encoder.num_latents, c.encoder.num_latent_channels, c.encoder.num_self_attends_per_block) == (512, 512, 12)
    assert create_model(DEBUG, device="meta").num_parameters() == 23_998


def test_tokens_are_patches_then_fourier_features(model):
    wave = torch.randn(2, 256)
    tokens, feats = model.preprocessor(wave)
    assert tokens.shape == (2, 32, 8 + 9)
    torch.testing.assert_close(feats, wave.reshape(2, 32, 8))
    pos = fourier_features(grid_positions((32,)), num_bands=4, max_resolution=(256,))
    torch.testing.assert_close(tokens[0, :, 8:], pos)


def test_shapes_and_channel_axis(model):
    wave = torch.randn(3, 256)
    with torch.no_grad():
        a, b = model(wave), model(wave[..., None])
        shorter = model(wave[:, :128])  # any multiple of samples_per_patch
    assert a.shape == (3, 7) and torch.equal(a, b) and shorter.shape == (3, 7)


def test_padding_mask(model):
    wave = torch.randn(2, 256)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, 20:] = False  # example 1: 20 real patches, the rest padding
    noisy = wave.clone()
    noisy[1, 160:] = torch.randn(96) * 5
    with torch.no_grad():
        a, b = model(wave, mask), model(noisy, mask)
        unmasked = model(noisy)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # masked patches do not reach the logits
    assert not torch.allclose(unmasked[1], a[1], atol=1e-3)
    for bad, exc in ((torch.ones(2, 256, dtype=torch.bool), ValueError), (mask.long(), TypeError)):
        with pytest.raises(exc, match="input_mask"):
            model(wave, bad)


def test_errors_and_config_validation(model):
    with pytest.raises(ValueError, match="samples_per_patch=8"):
        model(torch.randn(2, 250))
    with pytest.raises(ValueError, match="waveform"):
        model(torch.randn(2, 256, 2))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 256, dtype=torch.long))
    cfg = get_config(DEBUG)
    with pytest.raises(ValueError, match="'audio'"):
        PerceiverIOConfig(preprocessor=ModalityConfig(kind="video"), encoder=cfg.encoder, decoder=cfg.decoder)
    with pytest.raises(ValueError, match="mask_prob"):
        cfg.replace(preprocessor={"mask_prob": 0.5})
    with pytest.raises(ValueError, match="classification"):
        cfg.replace(decoder={"type": "projection"})


def test_gradients_and_save_load(model, tmp_path):
    wave = torch.randn(2, 256)
    model.train()
    model(wave).logsumexp(-1).sum().backward()
    model.eval()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(wave), model(wave))
