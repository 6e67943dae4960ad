"""Encoder weight sharing, decoders, whole models, parameter counts, gradients and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from testkit.models import (
    randomize_,
    tiny_config,
    tiny_decoder,
    tiny_encoder,
    tiny_prep,
)

from perceivers import PerceiverIO, create_model, list_models
from perceivers.decoders.basic import (
    BasicDecoder,
    ClassificationDecoder,
    ProjectionDecoder,
)
from perceivers.encoders import PerceiverEncoder
from perceivers.layers.attention import Attention
from perceivers.layers.blocks import MLP
from perceivers.layers.position import (
    fourier_features,
    grid_positions,
    subsampled_positions,
)
from perceivers.models import get_entry

TRUNC_STD = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]


# --------------------------------------------------------------------------------------------- encoder

def _encoder(**kw) -> PerceiverEncoder:
    return randomize_(PerceiverEncoder(tiny_encoder(**kw), input_channels=5)).eval()


def test_encoder_applies_shared_self_attention_stack_num_blocks_times():
    enc = _encoder(num_blocks=3, num_self_attends_per_block=2)
    x = torch.randn(2, 7, 5)
    keys = {k.split(".")[1] for k in enc.state_dict() if k.startswith("self_attends.")}
    assert keys == {"0", "1"}
    assert len(enc.cross_attends) == 1 and enc.cross_attend_schedule == [0, -1, -1]
    z = enc.latents.expand(2, -1, -1)
    z = enc.cross_attends[0](z, x)
    once = z
    for _ in range(3):
        for layer in enc.self_attends:
            z = layer(z)
    torch.testing.assert_close(enc(x), z, rtol=0, atol=1e-6)
    for layer in enc.self_attends:
        once = layer(once)
    assert not torch.allclose(enc(x), once, atol=1e-3)


def test_encoder_parameter_count_independent_of_num_blocks():
    counts = {nb: sum(p.numel() for p in PerceiverEncoder(tiny_encoder(num_blocks=nb), input_channels=5)
                      .parameters()) for nb in (1, 2, 5)}
    assert len(set(counts.values())) == 1


def test_interleaved_layout_two_cross_attends():
    enc = _encoder(num_blocks=4, num_self_attends_per_block=2, layout="interleaved")
    assert len(enc.cross_attends) == 2
    assert enc.cross_attend_schedule == [0, 1, 1, 1]
    x = torch.randn(2, 7, 5)
    z = enc.latents.expand(2, -1, -1)
    for i in range(4):
        z = enc.cross_attends[0 if i == 0 else 1](z, x)
        for layer in enc.self_attends:
            z = layer(z)
    torch.testing.assert_close(enc(x), z, rtol=0, atol=1e-6)
    # exactly one more cross-attend than the io layout
    io = PerceiverEncoder(tiny_encoder(num_blocks=4, num_self_attends_per_block=2), input_channels=5)
    one_cross = sum(p.numel() for p in enc.cross_attends[0].parameters())
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in io.parameters()) + one_cross


def test_interleaved_with_one_block_has_one_cross_attend():
    enc = PerceiverEncoder(tiny_encoder(num_blocks=1, layout="interleaved"), input_channels=5)
    assert len(enc.cross_attends) == 1 and enc.cross_attend_schedule == [0]


def test_only_cross_attention_receives_input_mask():
    enc = _encoder()
    x = torch.randn(2, 7, 5)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 4:] = False
    torch.testing.assert_close(enc(x, mask), enc(x[:, :4]), rtol=1e-5, atol=1e-5)


def test_encoder_qk_v_channels_reach_cross_and_self_attention():
    enc = PerceiverEncoder(tiny_encoder(qk_channels=4, v_channels=6), input_channels=5)
    for blk in (*enc.cross_attends, *enc.self_attends):
        assert blk.attention.q_proj.out_features == 4 and blk.attention.v_proj.out_features == 6
        assert blk.attention.o_proj.out_features == 8
    default = PerceiverEncoder(tiny_encoder(), input_channels=5)
    assert default.cross_attends[0].attention.q_proj.out_features == 5  # 'kv': input width
    assert default.self_attends[0].attention.q_proj.out_features == 8
    q = PerceiverEncoder(tiny_encoder(cross_attention_shape_for_attn="q"), input_channels=5)
    assert q.cross_attends[0].attention.q_proj.out_features == 8


# -------------------------------------------------------------------------------------------- decoders

def test_basic_decoder_query_mask_gives_bias_only_rows():
    dec = BasicDecoder(tiny_decoder("basic", num_heads=2), latent_channels=8)
    randomize_(dec).eval()
    z = torch.randn(2, 4, 8)
    qmask = torch.tensor([[True, False, True, True, False, True], [False] * 6])
    out = dec(z, query_mask=qmask)
    assert out.shape == (2, 6, 3) and torch.isfinite(out).all()
    # masked rows: attention result 0 -> o_proj bias, no query residual, then MLP and final projection
    blk = dec.cross_attend
    b = blk.attention.o_proj.bias.detach()
    expected_row = dec.output(b + blk.mlp(blk.mlp_norm(b)))
    for bi, oi in [(0, 1), (0, 4), *[(1, i) for i in range(6)]]:
        torch.testing.assert_close(out[bi, oi], expected_row, rtol=0, atol=1e-6)
    # unmasked rows are unaffected by masking other rows
    full = dec(z)
    torch.testing.assert_close(out[0, qmask[0]], full[0, qmask[0]], rtol=0, atol=1e-6)
    assert not torch.allclose(full[0, 1], expected_row, atol=1e-3)


def test_basic_decoder_fourier_queries_full_and_subsampled():
    dec = BasicDecoder(tiny_decoder("basic", output_index_dims=(2, 3), num_bands=2, max_resolution=(4, 6)),
                       latent_channels=8)
    full = dec.decoder_query(2)
    assert full.shape == (2, 6, 10)
    torch.testing.assert_close(full[0], fourier_features(grid_positions((2, 3)), num_bands=2,
                                                         max_resolution=(4, 6)))
    idx = torch.tensor([0, 4, 5])
    sub = dec.decoder_query(2, subsampled_points=idx)
    pos = torch.tensor([[-1.0, -1.0], [0.0, -1.0 / 3.0], [0.0, 1.0 / 3.0]])  # -1 + 2*idx/n
    torch.testing.assert_close(sub[1], fourier_features(pos, num_bands=2, max_resolution=(4, 6)))
    assert not torch.allclose(sub[0], full[0, idx])  # differs from the linspace grid rows
    randomize_(dec).eval()
    z = torch.randn(2, 4, 8)
    out = dec(z, subsampled_points=idx)
    assert out.shape == (2, 3, 3)
    # per-example subsampling (B, O')
    per = dec(z, subsampled_points=torch.stack([idx, idx.flip(0)]))
    torch.testing.assert_close(per[0], out[0])
    torch.testing.assert_close(per[1], out[1].flip(0), rtol=1e-5, atol=1e-6)


def test_basic_decoder_trainable_queries_ignore_subsampling():
    dec = BasicDecoder(tiny_decoder("basic", position_encoding="trainable", num_query_channels=4),
                       latent_channels=8)
    q = dec.decoder_query(2, subsampled_points=torch.tensor([1, 2]))
    assert torch.equal(q[0], dec.query_pos.pos_embs.detach())


def test_basic_decoder_concat_preprocessed_input():
    cfg = tiny_config(decoder=tiny_decoder("basic", output_index_dims=(7,), concat_preprocessed_input=True))
    m = randomize_(PerceiverIO(cfg)).eval()
    x = torch.randn(2, 7, 5)
    assert m.decoder.query_channels == 5 + 1 * (2 * 2 + 1)
    q = m.decoder.decoder_query(2, inputs_without_pos=x)
    assert q.shape == (2, 7, 5 + 5)
    # official order: [inputs_without_pos, pos_emb]
    assert torch.equal(q[..., :5], x)
    torch.testing.assert_close(q[0, :, 5:], fourier_features(grid_positions((7,)), num_bands=2,
                                                             max_resolution=(7,)))
    out = m(x)
    assert out.shape == (2, 7, 3)
    sub = m(x, subsampled_output_points=torch.tensor([6, 0]))
    q_sub = m.decoder.decoder_query(2, inputs_without_pos=x, subsampled_points=torch.tensor([6, 0]))
    assert torch.equal(q_sub[:, 0, :5], x[:, 6]) and torch.equal(q_sub[:, 1, :5], x[:, 0])
    assert sub.shape == (2, 2, 3)


def test_trainable_concat_queries_ignore_subsampling():
    cfg = tiny_config(decoder=tiny_decoder("basic", output_index_dims=(7,), concat_preprocessed_input=True,
                                           position_encoding="trainable", num_query_channels=3))
    m = randomize_(PerceiverIO(cfg)).eval()
    x = torch.randn(2, 7, 5)
    full = m(x)
    torch.testing.assert_close(m(x, subsampled_output_points=torch.tensor([6, 0])), full)
    q = m.decoder.decoder_query(2, inputs_without_pos=x, subsampled_points=torch.tensor([6, 0]))
    assert torch.equal(q[..., :5], x) and torch.equal(q[0, :, 5:], m.decoder.query_pos.pos_embs.detach())


def test_classification_decoder_shape_and_composition():
    dec = ClassificationDecoder(tiny_decoder("classification", num_outputs=7), latent_channels=8)
    randomize_(dec).eval()
    z = torch.randn(3, 4, 8)
    out = dec(z)
    assert out.shape == (3, 7)
    q = dec.query_pos.pos_embs.expand(3, -1, -1)
    torch.testing.assert_close(out, dec.output(dec.cross_attend(q, z))[:, 0], rtol=0, atol=1e-6)
    assert dec.query_pos.pos_embs.shape == (1, 8)
    assert not dec.cross_attend.use_query_residual  # official default for decoders


def test_projection_decoder_zero_init_and_average():
    dec = ProjectionDecoder(tiny_decoder("projection", num_outputs=6), latent_channels=8)
    dec.init_weights()
    z = torch.randn(2, 4, 8)
    assert torch.equal(dec(z), torch.zeros(2, 6))
    randomize_(dec)
    torch.testing.assert_close(dec(z), z.mean(1) @ dec.output.weight.T + dec.output.bias)
    m = PerceiverIO(tiny_config(decoder=tiny_decoder("projection")))
    assert torch.equal(m(torch.randn(2, 3, 5)), torch.zeros(2, 5))


def test_decoder_mask_and_points_need_basic_decoder():
    m = PerceiverIO(tiny_config())
    with pytest.raises(ValueError, match="basic"):
        m(torch.randn(1, 3, 5), query_mask=torch.ones(1, 1, dtype=torch.bool))


# --------------------------------------------------------------------------------------- whole models

@pytest.mark.parametrize("dec", ["classification", "projection", "basic"])
def test_model_output_shapes(dec):
    m = PerceiverIO(tiny_config(decoder=tiny_decoder(dec))).eval()
    out = m(torch.randn(3, 9, 5))
    assert out.shape == ((3, 6, 3) if dec == "basic" else (3, 5))
    assert torch.isfinite(out).all()


def test_model_input_mask_equals_truncation():
    m = randomize_(PerceiverIO(tiny_config())).eval()
    x = torch.randn(2, 9, 5)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 6:] = False
    torch.testing.assert_close(m(x, mask), m(x[:, :6]), rtol=1e-5, atol=1e-5)


def test_model_is_deterministic_in_eval():
    m = randomize_(PerceiverIO(tiny_config(encoder=tiny_encoder(dropout_prob=0.3, attention_dropout_prob=0.3))))
    x = torch.randn(2, 9, 5)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m(x))


def test_basic_decoder_without_final_projection_returns_query_width():
    m = PerceiverIO(tiny_config(decoder=tiny_decoder("basic", final_project=False))).eval()
    assert m.decoder.output is None
    assert m(torch.randn(2, 4, 5)).shape == (2, 6, 5)  # 1-D Fourier queries, 2 bands: 1 * (2*2 + 1)


@pytest.mark.parametrize("prep", [None, "pixels"])
def test_train_after_inference_mode_evaluation(prep):
    """Evaluating under torch.inference_mode must not poison later training steps (cached positions)."""
    cfg = tiny_config(prep=tiny_prep(prep) if prep else None, decoder=tiny_decoder("basic"))
    m = PerceiverIO(cfg)
    x = torch.randn(2, 3, 8, 8) if prep else torch.randn(2, 4, 5)
    with torch.inference_mode():
        before = m.eval()(x)
    m.train()
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    torch.testing.assert_close(m.eval()(x).detach(), before.clone())


def test_model_activation_reaches_every_mlp():
    m = PerceiverIO(tiny_config(activation="sq_relu"))
    mlps = [mod for mod in m.modules() if isinstance(mod, MLP)]
    assert len(mlps) == 1 + 2 + 1 and all(mlp.activation == "sq_relu" for mlp in mlps)


# ---------------------------------------------------------------------------- registry variant sizes

EXPECTED_COUNTS = {
    "perceiver-io-imagenet-learned": 62_255_848,
    "perceiver-io-imagenet-fourier": 48_440_627,
    "perceiver-io-imagenet-conv": 48_646_522,
    "perceiver-imagenet": 44_912_254,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_variant_parameter_counts_on_meta(name):
    m = create_model(name, device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert all(b.is_meta for b in m.buffers())
    assert m.num_parameters() == EXPECTED_COUNTS[name] == get_entry(name).num_parameters


def test_every_registered_variant_builds_on_meta_with_its_count():
    for name in list_models():
        m = create_model(name, device="meta")
        assert all(p.is_meta for p in m.parameters())
        expected = get_entry(name).num_parameters
        if expected is not None:
            assert m.num_parameters() == expected


def test_imagenet_component_counts():
    """Reference breakdown (docs/models.md, "Parameter breakdown") for the Fourier model."""
    m = create_model("perceiver-io-imagenet-fourier", device="meta")
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert m.config.input_channels == 261
    assert count(m.encoder.cross_attends) == 2_776_395
    assert count(m.encoder.self_attends[0]) == 6_301_696
    assert m.encoder.latents.numel() == 524_288
    assert count(m.decoder.cross_attend) == 6_303_744
    conv = create_model("perceiver-io-imagenet-conv", device="meta")
    assert conv.config.input_channels == 322 and conv.config.preprocessor.grid == (56, 56)
    assert count(conv.encoder.cross_attends) == 2_972_754


def test_digits_variant_runs():
    m = create_model("perceiver-io-digits").eval()
    p = m.config.preprocessor
    assert m(torch.rand(2, p.in_channels, *p.image_size)).shape == (2, m.config.decoder.num_outputs)


# --------------------------------------------------------------------------------------------- grads

GRAD_CASES = {
    "tokens-classification": tiny_config(),
    "tokens-projection": tiny_config(decoder=tiny_decoder("projection")),
    "tokens-basic-fourier": tiny_config(decoder=tiny_decoder("basic", num_heads=4)),
    "tokens-basic-trainable-concat": tiny_config(decoder=tiny_decoder(
        "basic", position_encoding="trainable", num_query_channels=4, output_index_dims=(9,),
        concat_preprocessed_input=True)),
    "interleaved": tiny_config(encoder=tiny_encoder(layout="interleaved", num_blocks=3)),
    "pixels": tiny_config(prep=tiny_prep("pixels")),
    "patches": tiny_config(prep=tiny_prep("patches", conv_after_patching=True)),
    "conv1x1-trainable-proj": tiny_config(prep=tiny_prep("conv1x1", position_encoding="trainable",
                                                         trainable_pos_channels=4, project_pos_dim=3)),
    "conv": tiny_config(prep=tiny_prep("conv")),
    "fourier-proj-add": tiny_config(prep=tiny_prep("conv1x1", num_channels=4, project_pos_dim=4,
                                                   concat_or_add_pos="add")),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradients_reach_every_parameter(case):
    cfg = GRAD_CASES[case]
    m = PerceiverIO(cfg).train()
    if cfg.decoder.type == "projection":  # zero-initialised head blocks every upstream gradient
        torch.nn.init.normal_(m.decoder.output.weight)
    x = torch.randn(2, 3, 8, 8) if cfg.preprocessor is not None else torch.randn(2, 9, 5)
    out = m(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


# ---------------------------------------------------------------------------------------------- init

def _check_trunc_normal(w: torch.Tensor, sigma: float, *, realised_std: float):
    w = w.detach().flatten()
    assert abs(w.std().item() - realised_std) / realised_std < 0.03
    assert abs(w.mean().item()) < 0.05 * realised_std
    assert w.abs().max() <= 2 * sigma * (1 + 1e-6)  # truncated at 2 sigma
    assert w.abs().max() >= 1.9 * sigma  # ... and not narrower


def test_attention_and_mlp_linear_init_fan_in():
    attn = Attention(q_in_channels=384, kv_in_channels=256, qk_channels=256, v_channels=512, output_channels=128)
    attn.init_weights()
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
        fan_in = lin.in_features
        target = math.sqrt(1.0 / fan_in)
        _check_trunc_normal(lin.weight, target / TRUNC_STD, realised_std=target)
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    mlp = MLP(256, widening_factor=2)
    mlp.init_weights()
    for lin in (mlp.fc1, mlp.fc2):
        target = math.sqrt(1.0 / lin.in_features)
        _check_trunc_normal(lin.weight, target / TRUNC_STD, realised_std=target)
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))


def test_latents_and_tables_init():
    m = PerceiverIO(tiny_config(encoder=tiny_encoder(num_latents=256, num_latent_channels=256,
                                                     num_self_attends_per_block=1, num_blocks=1,
                                                     num_self_attend_heads=1),
                                decoder=tiny_decoder(num_query_channels=64, num_outputs=2)))
    lat = m.encoder.latents
    # Haiku TruncatedNormal(0.02): N(0, 0.02) cut at +-2 sigma, realised std 0.02 * 0.8796
    _check_trunc_normal(lat, 0.02, realised_std=0.02 * TRUNC_STD)
    assert lat.abs().max() <= 0.04
    q = m.decoder.query_pos.pos_embs
    assert q.abs().max() <= 0.04 and 0.01 < q.std() < 0.025
    # decoder output: Haiku default Linear, sigma = 1/sqrt(fan_in), no variance correction
    w = m.decoder.output.weight
    assert w.abs().max() <= 2 / math.sqrt(w.shape[1]) * (1 + 1e-6)
    # LayerNorms start at 1 / 0
    ln = m.encoder.self_attends[0].attention_norm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))


def test_init_is_seeded():
    a = PerceiverIO(tiny_config())
    torch.manual_seed(0)
    b = PerceiverIO(tiny_config())
    torch.manual_seed(1)
    c = PerceiverIO(tiny_config())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["encoder.latents"], sc["encoder.latents"])


def test_subsampled_positions_used_by_decoder_are_official():
    idx = torch.tensor([3])
    assert subsampled_positions(idx, (6,)).item() == 0.0  # -1 + 2*3/6
