"""Fourier features, grid / subsampled positions and trainable position tables."""

from __future__ import annotations

import math

import pytest
import torch

from perceivers.layers.position import (
    FourierPositionEncoding,
    PositionEncoder,
    TrainablePositionEncoding,
    fourier_features,
    fourier_output_size,
    grid_positions,
    subsampled_positions,
)

# index_dims (2, 3), 2 bands, max_resolution (4, 6): frequencies x: linspace(1, 2, 2) = [1, 2],
# y: linspace(1, 3, 2) = [1, 3]. Positions x in {-1, 1}, y in {-1, 0, 1}, row-major (x slowest).
# Channels: [x, y, sin(pi x), sin(2 pi x), sin(pi y), sin(3 pi y), cos(pi x), cos(2 pi x), cos(pi y), cos(3 pi y)]
EXPECTED_2x3 = [
    [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, -1.0, -1.0],
    [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 1.0, 1.0],
    [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, -1.0, -1.0],
    [1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, -1.0, -1.0],
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 1.0, 1.0],
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, -1.0, -1.0],
]


def test_fourier_grid_hand_computed():
    enc = FourierPositionEncoding((2, 3), num_bands=2, max_resolution=(4, 6))
    feats = enc(2)
    assert feats.shape == (2, 6, 10)
    expected = torch.tensor(EXPECTED_2x3)
    torch.testing.assert_close(feats[0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(feats[1], expected, rtol=0, atol=1e-6)


def test_fourier_channel_order_at_non_grid_position():
    """At (x, y) = (0.25, -0.5): sin(pi/4), sin(pi/2), sin(-pi/2), sin(-3pi/2), cos(...) same order."""
    r = math.sqrt(0.5)
    pos = torch.tensor([[0.25, -0.5]])
    got = fourier_features(pos, num_bands=2, max_resolution=(4, 6))
    expected = torch.tensor([[0.25, -0.5, r, 1.0, -1.0, 1.0, r, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_fourier_frequencies_are_linspace_to_half_max_resolution():
    # 1-D, 3 bands, max_resolution 4 -> f = [1, 1.5, 2]; x = 0.5
    r = math.sqrt(0.5)
    got = fourier_features(torch.tensor([[0.5]]), num_bands=3, max_resolution=(4,))
    expected = torch.tensor([[0.5, 1.0, r, 0.0, 0.0, -r, -1.0]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_fourier_sine_only_and_no_concat_pos():
    pos = torch.tensor([[0.25, -0.5]])
    r = math.sqrt(0.5)
    got = fourier_features(pos, num_bands=2, max_resolution=(4, 6), sine_only=True, concat_pos=False)
    torch.testing.assert_close(got, torch.tensor([[r, 1.0, -1.0, 1.0]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("d,k", [(1, 1), (2, 2), (2, 64), (3, 32)])
def test_fourier_output_size(d, k):
    assert fourier_output_size(d, k) == d * (2 * k + 1)
    assert fourier_output_size(d, k, sine_only=True) == d * (k + 1)
    assert fourier_output_size(d, k, concat_pos=False) == 2 * d * k
    enc = FourierPositionEncoding((3,) * d, num_bands=k)
    assert enc.num_channels == d * (2 * k + 1)
    assert enc(1).shape == (1, 3**d, d * (2 * k + 1))


def test_imagenet_fourier_sizes():
    assert fourier_output_size(2, 64) == 258
    assert fourier_output_size(3, 32) == 195


def test_max_resolution_defaults_to_index_dims():
    a = FourierPositionEncoding((2, 3), num_bands=2)
    b = FourierPositionEncoding((2, 3), num_bands=2, max_resolution=(2, 3))
    c = FourierPositionEncoding((2, 3), num_bands=2, max_resolution=(4, 6))
    assert torch.equal(a(1), b(1))
    assert not torch.allclose(a(1), c(1))


def test_grid_positions_linspace_with_endpoints_row_major():
    torch.testing.assert_close(grid_positions((3,)), torch.tensor([[-1.0], [0.0], [1.0]]))
    expected = torch.tensor([[-1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(grid_positions((2, 3)), expected)
    g = grid_positions((5, 7))
    assert g[0].tolist() == [-1.0, -1.0] and g[-1].tolist() == [1.0, 1.0]


def test_subsampled_positions_minus_one_plus_two_idx_over_n():
    idx = torch.tensor([0, 4, 5])  # coords (0,0), (1,1), (1,2) in a 2x3 grid
    got = subsampled_positions(idx, (2, 3))
    expected = torch.tensor([[-1.0, -1.0], [0.0, -1.0 / 3.0], [0.0, 1.0 / 3.0]])
    torch.testing.assert_close(got, expected)
    # unlike the full grid, the last index does not reach +1
    assert subsampled_positions(torch.tensor([5]), (2, 3)).max() < 1.0
    batched = subsampled_positions(torch.tensor([[0, 5], [4, 1]]), (2, 3))
    assert batched.shape == (2, 2, 2)
    torch.testing.assert_close(batched[1, 0], expected[1])


def test_per_example_positions():
    enc = FourierPositionEncoding((2, 3), num_bands=2, max_resolution=(4, 6))
    pos = torch.tensor([[[0.25, -0.5]], [[-1.0, -1.0]]])
    got = enc(2, pos=pos)
    assert got.shape == (2, 1, 10)
    torch.testing.assert_close(got[1, 0], torch.tensor(EXPECTED_2x3[0]), rtol=0, atol=1e-6)


def test_fourier_other_grid_size_is_renormalised():
    enc = FourierPositionEncoding((2, 3), num_bands=2, max_resolution=(4, 6))
    other = enc(1, index_dims=(3, 3))
    assert other.shape == (1, 9, 10)
    torch.testing.assert_close(other[0, :, :2], grid_positions((3, 3)))


def test_fourier_cache_survives_inference_mode():
    """Features first computed under ``torch.inference_mode`` must still be usable for training."""
    enc = PositionEncoder(kind="fourier", index_dims=(2, 3), input_channels=2, num_bands=2, project_pos_dim=4)
    x = torch.randn(1, 6, 2)
    with torch.inference_mode():
        ref = enc(x, (2, 3))
    out = enc(x.requires_grad_(), (2, 3))
    out.sum().backward()
    assert enc.projection.weight.grad is not None
    torch.testing.assert_close(out.detach(), ref.clone())


def test_fourier_dtype_follows_request():
    enc = FourierPositionEncoding((2, 3), num_bands=2)
    assert enc(1, dtype=torch.float64).dtype == torch.float64
    assert enc(1).dtype == torch.float32


def test_trainable_position_encoding():
    enc = TrainablePositionEncoding(6, 4, init_scale=0.5)
    enc.init_weights()
    out = enc(3)
    assert out.shape == (3, 6, 4)
    assert torch.equal(out[2], enc.pos_embs.detach())
    assert enc.pos_embs.abs().max() <= 1.0


def test_position_encoder_concat_add_project():
    x = torch.randn(2, 6, 3)
    cat = PositionEncoder(kind="fourier", index_dims=(2, 3), input_channels=3, num_bands=2,
                          max_resolution=(4, 6))
    out = cat(x, (2, 3))
    assert cat.output_channels == 13 and out.shape == (2, 6, 13)
    assert torch.equal(out[..., :3], x)
    torch.testing.assert_close(out[0, :, 3:], torch.tensor(EXPECTED_2x3), rtol=0, atol=1e-6)

    proj = PositionEncoder(kind="fourier", index_dims=(2, 3), input_channels=3, num_bands=2,
                           project_pos_dim=3, concat_or_add="add")
    proj.init_weights()
    pos = proj.projection(proj.encoding(2))
    torch.testing.assert_close(proj(x, (2, 3)), x + pos)
    assert proj.output_channels == 3

    none = PositionEncoder(kind="none", index_dims=(2, 3), input_channels=3)
    assert torch.equal(none(x, (2, 3)), x) and none.output_channels == 3

    tr = PositionEncoder(kind="trainable", index_dims=(2, 3), input_channels=3, trainable_channels=5)
    tr.init_weights()
    out = tr(x, (2, 3))
    assert out.shape == (2, 6, 8) and torch.equal(out[1, :, 3:], tr.encoding.pos_embs.detach())


def test_position_encoder_errors():
    with pytest.raises(ValueError, match="position encoding"):
        PositionEncoder(kind="sinusoid", index_dims=(2,), input_channels=3)
    with pytest.raises(ValueError, match="add"):
        PositionEncoder(kind="fourier", index_dims=(2,), input_channels=3, num_bands=2, concat_or_add="add")
    with pytest.raises(ValueError, match="max_resolution"):
        FourierPositionEncoding((2, 3), num_bands=2, max_resolution=(4,))
    with pytest.raises(ValueError, match="max_resolution"):
        fourier_features(torch.zeros(1, 2), num_bands=2, max_resolution=(4,))


def test_standalone_tables_are_initialised_on_construction():
    """Tables built outside a full model hold the official init, not uninitialised memory."""
    from perceivers.encoders import EncoderConfig, PerceiverEncoder

    for table in (TrainablePositionEncoding(4096, 16).pos_embs,
                  PerceiverEncoder(EncoderConfig(num_latents=256, num_latent_channels=64, num_self_attend_heads=4,
                                                 num_blocks=1, num_self_attends_per_block=1),
                                   input_channels=3).latents):
        assert torch.isfinite(table).all()
        assert table.abs().max() <= 0.04 and 0.01 < table.std() < 0.03
