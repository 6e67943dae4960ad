"""Image preprocessor: conv (TF-SAME), pixels, patches (space to depth) and conv1x1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testkit.models import randomize_, tiny_prep

from perceivers.layers.position import fourier_features, grid_positions
from perceivers.preprocessors.image import (
    ImagePreprocessor,
    prep_grid,
    space_to_depth,
    tf_same_padding,
)


def test_tf_same_padding_values():
    assert tf_same_padding(224, 7, 2) == (2, 3)
    assert tf_same_padding(112, 3, 2) == (0, 1)
    assert tf_same_padding(7, 7, 2) == (3, 3)
    assert tf_same_padding(8, 1, 4) == (0, 0)
    assert tf_same_padding(5, 3, 1) == (1, 1)


def test_conv_prep_224_gives_3136_tokens_and_matches_tf_same_reference():
    cfg = tiny_prep("conv", image_size=(224, 224), num_channels=4, num_bands=2)
    prep = randomize_(ImagePreprocessor(cfg)).eval()
    img = torch.randn(1, 3, 224, 224)
    tokens, feats, grid = prep(img)
    assert grid == (56, 56) == cfg.grid
    assert tokens.shape == (1, 3136, 4 + 10) and feats.shape == (1, 3136, 4)
    # manual reference: pad (2, 3) on each spatial axis, 7x7/2 conv, BN, ReLU, pad (0, 1), 3x3/2 max-pool
    conv, bn = prep.conv.convs[0], prep.conv.batchnorms[0]
    x = F.conv2d(F.pad(img, (2, 3, 2, 3)), conv.weight, stride=2)
    x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5)
    x = torch.relu(x * bn.weight[:, None, None] + bn.bias[:, None, None])
    assert x.shape[-2:] == (112, 112)
    x = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 3, stride=2)  # after ReLU, zero padding == -inf padding
    expected = x.permute(0, 2, 3, 1).reshape(1, 3136, 4)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-4)
    # a symmetric (3, 3) padding (HF transformers) gives a 55x55 map: different numbers and size
    hf = F.max_pool2d(torch.relu(F.conv2d(F.pad(img, (3, 3, 3, 3)), conv.weight, stride=2)), 3, stride=2)
    assert hf.shape[-2:] == (55, 55)
    # Fourier positions over the 56x56 grid, max_resolution defaults to the grid
    pos = fourier_features(grid_positions((56, 56)), num_bands=2, max_resolution=(56, 56))
    torch.testing.assert_close(tokens[0, :, 4:], pos)


def test_conv_prep_two_layers_for_downsample_16():
    cfg = tiny_prep("conv", image_size=(32, 32), spatial_downsample=16, num_channels=4)
    prep = ImagePreprocessor(cfg).eval()
    assert len(prep.conv.convs) == 2
    _, feats, grid = prep(torch.randn(1, 3, 32, 32))
    assert grid == (2, 2) == cfg.grid and feats.shape == (1, 4, 4)


def test_conv_prep_without_batchnorm_has_no_bn_parameters():
    cfg = tiny_prep("conv", conv2d_use_batchnorm=False, num_channels=4)
    prep = ImagePreprocessor(cfg)
    assert not any("batchnorms" in n for n, _ in prep.named_parameters())
    assert sum(p.numel() for p in prep.conv.parameters()) == 7 * 7 * 3 * 4  # conv has no bias


@pytest.mark.parametrize("h,w,s", [(8, 8, 2), (5, 7, 2), (9, 6, 3), (4, 4, 1)])
def test_pixels_downsampling_slices_spatial_axes(h, w, s):
    cfg = tiny_prep("pixels", image_size=(h, w), spatial_downsample=s, position_encoding="none")
    prep = ImagePreprocessor(cfg)
    img = torch.randn(2, 3, h, w)
    tokens, feats, grid = prep(img)
    expected = img[:, :, ::s, ::s].permute(0, 2, 3, 1)
    assert grid == (-(-h // s), -(-w // s)) == prep_grid(cfg, h, w)
    assert torch.equal(feats, expected.reshape(2, -1, 3))
    assert torch.equal(tokens, feats)
    # channel 0 of token (1, 1) is pixel (s, s) of channel 0
    assert feats[0, grid[1] + 1, 0] == img[0, 0, s, s]


def test_space_to_depth_channel_order_dh_dw_c():
    b, c, hh, ww, s = 1, 2, 4, 6, 2
    img = torch.arange(b * c * hh * ww, dtype=torch.float32).reshape(b, c, hh, ww)
    out = space_to_depth(img.permute(0, 2, 3, 1), s)
    assert out.shape == (1, 2, 3, s * s * c)
    for i in range(2):
        for j in range(3):
            expected = [img[0, ch, i * s + dh, j * s + dw].item()
                        for dh in range(s) for dw in range(s) for ch in range(c)]
            assert out[0, i, j].tolist() == expected


def test_patches_prep_uses_space_to_depth_and_optional_linear():
    cfg = tiny_prep("patches", image_size=(4, 6), in_channels=2, spatial_downsample=2, position_encoding="none")
    prep = ImagePreprocessor(cfg)
    img = torch.randn(1, 2, 4, 6)
    _, feats, grid = prep(img)
    assert grid == (2, 3) and feats.shape == (1, 6, 8)
    # token 4 = patch (1, 1); channel index = (dh * 2 + dw) * C + c
    assert feats[0, 4, (1 * 2 + 0) * 2 + 1] == img[0, 1, 3, 2]
    lin = ImagePreprocessor(cfg.replace(conv_after_patching=True, num_channels=5))
    randomize_(lin)
    _, feats2, _ = lin(img)
    torch.testing.assert_close(feats2, lin.patches_linear(feats))


@pytest.mark.parametrize("s", [1, 2, 3])
def test_conv1x1_stride(s):
    cfg = tiny_prep("conv1x1", image_size=(7, 5), spatial_downsample=s, num_channels=4, position_encoding="none")
    prep = randomize_(ImagePreprocessor(cfg))
    img = torch.randn(2, 3, 7, 5)
    _, feats, grid = prep(img)
    assert grid == (-(-7 // s), -(-5 // s)) == cfg.grid
    ref = F.conv2d(img, prep.conv1x1.weight, prep.conv1x1.bias, stride=s).permute(0, 2, 3, 1).reshape(2, -1, 4)
    torch.testing.assert_close(feats, ref)
    assert prep.conv1x1.bias is not None


def test_trainable_positions_with_projection_concat():
    cfg = tiny_prep("conv1x1", image_size=(3, 4), num_channels=4, position_encoding="trainable",
                    trainable_pos_channels=6, project_pos_dim=5)
    prep = randomize_(ImagePreprocessor(cfg))
    assert cfg.output_channels == 9
    tokens, feats, _ = prep(torch.randn(2, 3, 3, 4))
    assert tokens.shape == (2, 12, 9)
    pos = prep.position.projection(prep.position.encoding.pos_embs)
    torch.testing.assert_close(tokens[1, :, 4:], pos)
    assert torch.equal(tokens[..., :4], feats)


def test_fourier_positions_follow_actual_image_size():
    cfg = tiny_prep("pixels", image_size=(8, 8), num_bands=2)
    prep = ImagePreprocessor(cfg)
    tokens, _, grid = prep(torch.randn(1, 3, 5, 6))
    assert grid == (5, 6) and tokens.shape == (1, 30, 3 + 10)
    torch.testing.assert_close(tokens[0, :, 3:5], grid_positions((5, 6)))


def test_add_positions():
    cfg = tiny_prep("conv1x1", num_channels=10, num_bands=2, concat_or_add_pos="add")
    prep = ImagePreprocessor(cfg)
    tokens, feats, _ = prep(torch.randn(1, 3, 8, 8))
    assert tokens.shape == feats.shape == (1, 64, 10)
    pos = fourier_features(grid_positions((8, 8)), num_bands=2, max_resolution=(8, 8))
    torch.testing.assert_close(tokens - feats, pos.expand(1, -1, -1), rtol=1e-5, atol=1e-5)
