"""Optical-flow Perceiver IO: parameter counts, official patch extraction, chunked decoding, output
scale, zero-initialised head, tiled inference, errors and save/load."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from testkit.models import randomize_

from perceivers import (
    FlowDecoderConfig,
    FlowPreprocessorConfig,
    PerceiverIOConfig,
    PerceiverIOFlow,
    create_model,
    from_pretrained,
)
from perceivers.preprocessors.flow import (
    extract_flow_patches,
    frames_from_images,
    tile_starts,
    tile_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")
H, W = 12, 16  # perceiver-io-flow-debug image size


def _model(**overrides) -> PerceiverIOFlow:
    torch.manual_seed(0)
    return randomize_(create_model("perceiver-io-flow-debug", **overrides), 0.3).eval()


def _frames(b: int = 2, h: int = H, w: int = W, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 2, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_released_parameter_count_and_breakdown():
    m = create_model("perceiver-io-flow", device="meta")
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert m.num_parameters() == 41_057_134
    assert m.config.preprocessor.output_channels == 322 and m.config.preprocessor.image_size == (368, 496)
    assert tuple(m.preprocessor.patches_linear.weight.shape) == (64, 54)
    assert count(m.preprocessor) == 3_520 and m.encoder.latents.numel() == 2048 * 512
    assert count(m.encoder.cross_attends) == 1_066_578 and len(m.encoder.self_attends) == 24
    assert count(m.encoder.self_attends[0]) == 1_577_984
    assert count(m.decoder.cross_attend) == 1_066_198 and count(m.decoder.output) == 646


def _patches_by_loop(frames: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: out[b, t, (i*k + j)*C + c, y, x] = frame[c, y+i-r, x+j-r] or 0 outside."""
    b, t, c, h, w = frames.shape
    r = k // 2
    out = np.zeros((b, t, k * k * c, h, w), dtype=frames.dtype)
    for bi, ti, y, x, i, j, ci in itertools.product(range(b), range(t), range(h), range(w), range(k), range(k), range(c)):
        yy, xx = y + i - r, x + j - r
        if 0 <= yy < h and 0 <= xx < w:
            out[bi, ti, (i * k + j) * c + ci, y, x] = frames[bi, ti, ci, yy, xx]
    return out


@pytest.mark.parametrize("k", [3, 5])
def test_patch_extraction_matches_reference_order(k):
    frames = _frames(b=1, h=4, w=5)
    patches = extract_flow_patches(frames, k)
    assert patches.shape == (1, 2, k * k * 3, 4, 5)
    np.testing.assert_array_equal(patches.numpy(), _patches_by_loop(frames.numpy(), k))
    centre = (k * k // 2) * 3  # patch (r, r) holds the pixel itself
    assert torch.equal(patches[:, :, centre:centre + 3], frames)
    assert (patches[:, :, :3, 0, :] == 0).all()  # top-left patch value of the top row is zero padding


def test_preprocessor_concatenates_frames_then_projects():
    m = _model()
    frames = _frames()
    patches = extract_flow_patches(frames)
    tokens, feats, grid = m.preprocessor(patches)
    assert grid == (H, W) and tokens.shape == (2, H * W, m.config.preprocessor.output_channels)
    per_pixel = patches.permute(0, 3, 4, 1, 2).reshape(2, H * W, 54)  # frame 1's 27 values, then frame 2's
    lin = m.preprocessor.patches_linear
    torch.testing.assert_close(feats, per_pixel @ lin.weight.T + lin.bias, rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens[..., :16], feats)
    with torch.no_grad():  # frames and precomputed patches give the same flow
        torch.testing.assert_close(m(frames), m(patches=patches), rtol=0, atol=0)


def test_chunked_decoding_equals_unchunked():
    m = _model()
    frames = _frames()
    with torch.no_grad():
        full = m(frames, chunk_size=H * W)
        assert full.shape == (2, H, W, 2) and full.abs().max() > 1e-3
        for size in (1, 7, 64, 100):  # 7 and 100 do not divide the 192 queries
            torch.testing.assert_close(m(frames, chunk_size=size), full, rtol=0, atol=1e-6)
    unchunked = _model(decoder={"chunk_size": None})
    with torch.no_grad():
        torch.testing.assert_close(unchunked(frames), full, rtol=0, atol=1e-6)
    loss = m(frames, chunk_size=50).square().sum()  # chunks are differentiable (training)
    loss.backward()
    assert m.encoder.latents.grad is not None and m.encoder.latents.grad.abs().sum() > 0


def test_output_scale_official_pixels_and_hf_raw():
    official, raw = _model(), _model(decoder={"flow_scale_factor": 1.0})
    assert official.config.decoder.flow_scale_factor == 20.0 and official.config.decoder.rescale_factor == 100.0
    frames = _frames()
    with torch.no_grad():
        torch.testing.assert_close(official(frames), raw(frames) * 20.0, rtol=1e-6, atol=0)
        z, tokens = raw.forward_features(frames)
        head = raw.decoder.output(raw.decoder.cross_attend(tokens, z))  # (B, M, 2) before rescaling
        # not bit-exact: the model decodes in chunks, whose GEMM shapes take other kernel paths on AVX2
        torch.testing.assert_close(raw(frames), (head / 100.0).reshape(2, H, W, 2), rtol=1e-5, atol=1e-6)


def test_fresh_model_has_zero_flow_head():
    m = create_model("perceiver-io-flow-debug")
    assert (m.decoder.output.weight == 0).all() and (m.decoder.output.bias == 0).all()
    assert m.preprocessor.patches_linear.weight.std() > 0
    with torch.no_grad():
        assert (m(_frames()) == 0).all()


def test_tile_grid_follows_the_colab_and_never_overruns():
    assert tile_starts(436, 368, 20) == [0, 68] and tile_starts(1024, 496, 20) == [0, 476, 528]  # Sintel: 6 tiles
    assert tile_starts(368, 368, 20) == [0]
    assert tile_starts(700, 368, 20) == [0, 332]  # the colab's grid would place a tile at 348 (past 700)
    for size in range(368, 1500, 7):
        starts = tile_starts(size, 368, 20)
        assert starts[0] == 0 and starts[-1] == size - 368 and starts == sorted(set(starts))
        assert all(b - a <= 368 - 20 for a, b in zip(starts, starts[1:]))  # overlap >= min_overlap
    w = tile_weights((4, 6))
    assert w.tolist() == [[1, 1, 1, 1, 1, 1], [1, 2, 2, 2, 2, 1], [1, 2, 2, 2, 2, 1], [1, 1, 1, 1, 1, 1]]


def test_tiled_inference_blends_tiles_by_edge_distance():
    m = _model()
    frames = _frames(b=1, h=H + 5, w=W + 9, seed=2)  # 2 x 2 tiles of 12 x 16 with min_overlap 4
    with torch.no_grad():
        tiled = m.forward_tiled(frames, min_overlap=4)
        same = _frames(b=1, seed=3)
        torch.testing.assert_close(m.forward_tiled(same, min_overlap=4), m(same), rtol=0, atol=1e-6)  # one tile
        ys, xs = tile_starts(H + 5, H, 4), tile_starts(W + 9, W, 4)
        assert ys == [0, 5] and xs == [0, 9]
        tiles = {(y, x): m(frames[..., y:y + H, x:x + W])[0] for y in ys for x in xs}
    assert tiled.shape == (1, H + 5, W + 9, 2)
    torch.testing.assert_close(tiled[0, 0, 0], tiles[0, 0][0, 0])  # covered by one tile only
    torch.testing.assert_close(tiled[0, -1, -1], tiles[5, 9][-1, -1])
    weight = lambda i, j: min(i + 1, H - i, j + 1, W - j)  # noqa: E731
    y, x = 7, 10  # inside all four tiles
    num = sum(weight(y - ty, x - tx) * tiles[ty, tx][y - ty, x - tx] for ty, tx in tiles)
    torch.testing.assert_close(tiled[0, y, x], num / sum(weight(y - ty, x - tx) for ty, tx in tiles))


def test_frames_from_images_normalises_uint8():
    a = np.zeros((H, W, 3), dtype=np.uint8)
    b = np.full((H, W, 3), 255, dtype=np.uint8)
    frames = frames_from_images(a, b)
    assert frames.shape == (1, 2, 3, H, W) and frames.dtype == torch.float32
    assert (frames[:, 0] == -1).all() and (frames[:, 1] == 1).all()
    with pytest.raises(ValueError, match="uint8"):
        frames_from_images(a.astype(np.float32), b)
    with pytest.raises(ValueError, match="unlike image 0"):
        frames_from_images(a, b[:4])


def test_bad_inputs_raise_clear_errors():
    m = _model()
    frames = _frames()
    cases = [
        (lambda: m(frames[0]), ValueError, "rank 4"),
        (lambda: m(frames.permute(0, 1, 3, 4, 2)), ValueError, "channels-last"),
        (lambda: m(_frames(h=H + 1)), ValueError, "forward_tiled"),
        (lambda: m((frames * 100).long()), TypeError, "floating point"),
        (lambda: m(frames.double()), TypeError, "dtype"),
        (lambda: m(), ValueError, "exactly one"),
        (lambda: m(frames, patches=extract_flow_patches(frames)), ValueError, "exactly one"),
        (lambda: m(patches=frames), ValueError, "patches"),
        (lambda: m(frames, chunk_size=0), ValueError, "chunk_size"),
        (lambda: m.forward_tiled(_frames(h=H - 1)), ValueError, "smaller than the tile"),
        (lambda: m.forward_tiled(frames, min_overlap=H), ValueError, "min_overlap"),
        (lambda: extract_flow_patches(frames, 2), ValueError, "odd"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_config_validation():
    with pytest.raises(ValueError, match="patch_size"):
        FlowPreprocessorConfig(patch_size=4)
    with pytest.raises(ValueError, match="flow_scale_factor"):
        FlowDecoderConfig(flow_scale_factor=0.0)
    with pytest.raises(TypeError, match="chunk_size"):
        FlowDecoderConfig(chunk_size=1.5)
    with pytest.raises(ValueError, match="layout"):
        PerceiverIOConfig(preprocessor=FlowPreprocessorConfig(), decoder=FlowDecoderConfig(),
                          encoder={"layout": "interleaved"})
    with pytest.raises(ValueError, match="decoder.type"):
        PerceiverIOConfig(preprocessor=FlowPreprocessorConfig())  # the default decoder classifies
    with pytest.raises(TypeError, match="PerceiverIOConfig"):
        PerceiverIOFlow(FlowPreprocessorConfig())


def test_save_and_load_round_trip(tmp_path):
    m = _model(decoder={"flow_scale_factor": 1.0, "chunk_size": 10})
    m.save_pretrained(tmp_path / "flow")
    loaded = from_pretrained(tmp_path / "flow")
    assert isinstance(loaded, PerceiverIOFlow) and loaded.config == m.config
    frames = _frames()
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames), m(frames), rtol=0, atol=0)
