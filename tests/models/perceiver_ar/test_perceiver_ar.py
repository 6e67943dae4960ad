"""Perceiver AR: rotary against hand-computed cases, the whole forward against a naive float64
reference, causal and padding invariances, context reduction, config errors, registry and save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from testkit.perceiver_ar import make, tiny_ar  # noqa: E402

from perceivers.generation.kv_cache import LayerKVCache
from perceivers.layers.attention import Attention
from perceivers.layers.rotary import (
    Rotary,
    RotaryEmbedding,
    apply_rotary,
    rotary_channels,
    rotary_wavelengths,
)
from perceivers.models import create_model, from_pretrained, get_entry, list_models
from perceivers.models.perceiver_ar.model import (
    PerceiverAR,
    PerceiverARConfig,
    latent_steps,
    sinusoid_table,
)

POSITIONS = ["rotary", "absolute"]
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- rotary

def test_rotary_sizes_and_wavelengths():
    assert rotary_channels(8, 0.5) == 4 and rotary_channels(10, 0.5) == 4 and rotary_channels(8, 0.25) == 2
    assert rotary_channels(64, 1.0) == 64 and rotary_channels(4, 0.5) == 2
    # linspace includes its endpoint: wavelengths run from exactly 1 to exactly max_wavelength.
    torch.testing.assert_close(rotary_wavelengths(4, 24), torch.tensor([1.0, 24.0]))
    torch.testing.assert_close(rotary_wavelengths(6, 100), torch.tensor([1.0, 10.0, 100.0]))
    assert RotaryEmbedding(head_dim=8, max_wavelength=24).num_channels == 4


def test_rotary_hand_computed_interleaved_case():
    """head_dim 8, fraction 0.5 -> R = 4, max_wavelength 24 -> frequencies [1, 24], position 3."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).view(1, 1, 1, 8)
    rot = RotaryEmbedding(head_dim=8, max_wavelength=24, fraction=0.5)(torch.tensor([[3]]))
    a, b = 3.0, 3.0 / 24.0
    expected = torch.tensor([
        1 * math.cos(a) - 2 * math.sin(a), 2 * math.cos(a) + 1 * math.sin(a),
        3 * math.cos(b) - 4 * math.sin(b), 4 * math.cos(b) + 3 * math.sin(b),
        5.0, 6.0, 7.0, 8.0,
    ])
    torch.testing.assert_close(apply_rotary(x, rot).flatten(), expected)
    # A rotate-half layout (pairs (0, 2), (1, 3)) would give other numbers: the test pins interleaving.
    half = torch.tensor([1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b)])
    assert not torch.allclose(apply_rotary(x, rot).flatten()[:2], half)


def test_rotary_padding_position_is_identity_and_scores_are_relative():
    emb = RotaryEmbedding(head_dim=8, max_wavelength=24)
    x = torch.randn(1, 2, 1, 8)
    torch.testing.assert_close(apply_rotary(x, emb(torch.tensor([[0]]))), x)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(p, r):
        return (apply_rotary(q, emb(torch.tensor([[p]]))) * apply_rotary(k, emb(torch.tensor([[r]])))).sum()

    torch.testing.assert_close(score(7, 3), score(12, 8), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 5))


@pytest.mark.parametrize("kwargs, field", [
    (dict(head_dim=0, max_wavelength=8), "head_dim"),
    (dict(head_dim=8, max_wavelength=8, fraction=0.0), "fraction"),
    (dict(head_dim=8, max_wavelength=8, fraction=1.5), "fraction"),
    (dict(head_dim=2, max_wavelength=8, fraction=0.5), "fraction"),
    (dict(head_dim=8, max_wavelength=0), "max_wavelength"),
])
def test_rotary_errors_name_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RotaryEmbedding(**kwargs)


# ------------------------------------------------------------------------------- attention hooks

def test_attention_cache_hook_equals_one_causal_call():
    """Keys fed in two chunks through a cache equal one call with a right-aligned causal mask; an
    entry stored as invalid (kv_mask) is never attended later."""
    attn = Attention(q_in_channels=6, kv_in_channels=6, qk_channels=8, v_channels=8, output_channels=6, num_heads=2)
    x = torch.randn(2, 7, 6)
    rot = RotaryEmbedding(head_dim=4, max_wavelength=16)(torch.arange(1, 8).expand(2, 7))
    causal = torch.ones(7, 7, dtype=torch.bool).tril().expand(2, 7, 7)
    full = attn(x, x, causal, q_rotary=rot, k_rotary=rot)
    cache = LayerKVCache(10)
    first = attn(x[:, :4], x[:, :4], causal[:, :4, :4], q_rotary=Rotary(rot.cos[:, :4], rot.sin[:, :4]),
                 k_rotary=Rotary(rot.cos[:, :4], rot.sin[:, :4]), kv_cache=cache)
    rest = Rotary(rot.cos[:, 4:], rot.sin[:, 4:])
    second = attn(x[:, 4:], x[:, 4:], causal[:, 4:, 4:], q_rotary=rest, k_rotary=rest, kv_cache=cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-5, atol=1e-6)
    assert cache.length == 7
    # Entry 1 stored as invalid: a later query ignores it, as a mask without key 1 would.
    cache2 = LayerKVCache(10)
    attn(x[:, :4], x[:, :4], kv_cache=cache2, kv_mask=torch.tensor([[True, False, True, True]] * 2))
    later = attn(x[:, 4:5], x[:, 4:5], kv_cache=cache2)
    keep = torch.tensor([True, False, True, True, True]).expand(2, 5)
    torch.testing.assert_close(later, attn(x[:, 4:5], x[:, :5], keep), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kv_mask"):
        attn(x, x, kv_mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="overflow"):
        attn(x, x, kv_cache=cache)


# ------------------------------------------------------------------------------ naive reference

def _naive_forward(model: PerceiverAR, ids: list[int], n: int) -> torch.Tensor:
    """Float64 Perceiver AR for one unpadded sequence, written from the paper/official description:
    loops over heads, explicit masks, rotary as complex multiplication."""
    c, d = model.config, torch.float64
    P = {k: v.detach().to(d) for k, v in model.state_dict().items()}
    lin = lambda pre, h: h @ P[pre + ".weight"].T + P[pre + ".bias"]  # noqa: E731
    ln = lambda pre, h: F.layer_norm(h, h.shape[-1:], P[pre + ".weight"], P[pre + ".bias"], eps=1e-5)  # noqa: E731
    mlp = lambda pre, h: lin(pre + ".fc2", torch.relu(lin(pre + ".fc1", h)) ** 2)  # noqa: E731
    m = len(ids)
    pos = torch.arange(1, m + 1, dtype=d)  # 1-based data positions
    x = P["token_embedding.weight"][torch.tensor(ids)]
    if c.position_encoding == "absolute":
        x = x + P["position_embeddings"][1:m + 1]
    steps = [m - n + i for i in range(n)]

    def rotate(v, p):  # v: (T, head_dim), p: (T,)
        r = int(v.shape[-1] * c.rotary_fraction / 2) * 2
        bands = r // 2
        wl = torch.tensor([c.wavelength ** (k / (bands - 1)) if bands > 1 else 1.0 for k in range(bands)], dtype=d)
        z = torch.complex(v[:, 0:r:2], v[:, 1:r:2]) * torch.exp(1j * p[:, None] / wl)
        return torch.cat([torch.stack([z.real, z.imag], dim=-1).flatten(-2), v[:, r:]], dim=-1)

    def attend(pre, xq, xkv, qpos, kpos, heads, allowed):
        q, k, v = lin(pre + ".q_proj", xq), lin(pre + ".k_proj", xkv), lin(pre + ".v_proj", xkv)
        dh, out = q.shape[-1] // heads, []
        for h in range(heads):
            qh, kh, vh = (t[:, h * dh:(h + 1) * dh] for t in (q, k, v))
            if c.position_encoding == "rotary":
                qh, kh = rotate(qh, qpos), rotate(kh, kpos)
            logits = (qh @ kh.T / math.sqrt(dh)).masked_fill(~allowed, -math.inf)
            out.append(torch.softmax(logits, dim=-1) @ vh)
        return lin(pre + ".o_proj", torch.cat(out, dim=-1))

    zpos = pos[steps]
    z = lin("query_proj", x[steps])
    allowed = torch.tensor([[j <= s for j in range(m)] for s in steps])
    z = z + attend("cross_attend.attention", ln("cross_attend.q_norm", z), ln("cross_attend.kv_norm", x), zpos, pos,
                   c.num_cross_attend_heads, allowed)
    z = z + mlp("cross_attend.mlp", ln("cross_attend.mlp_norm", z))
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(c.num_self_attend_layers):
        pre = f"self_attends.{i}"
        h = ln(pre + ".attention_norm", z)
        z = z + attend(pre + ".attention", h, h, zpos, zpos, c.num_self_attend_heads, causal)
        z = z + mlp(pre + ".mlp", ln(pre + ".mlp_norm", z))
    return lin("logits", ln("final_norm", z))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("m, n", [(13, 6), (6, 6), (9, 1)])
def test_forward_matches_naive_float64_reference(position, m, n):
    model = make(position)
    ids = torch.randint(0, 11, (m,)).tolist()
    out = model(torch.tensor([ids]), num_latents=n)
    assert out.shape == (1, n, 11)
    torch.testing.assert_close(out[0].double(), _naive_forward(model, ids, n), rtol=1e-4, atol=1e-4)


def test_reference_discriminates_rotary_fraction():
    """The same weights with another rotated fraction give other logits: the reference pins R."""
    model = make("rotary")
    other = PerceiverAR(tiny_ar(rotary_fraction=1.0)).eval()
    other.load_state_dict(model.state_dict())
    ids = torch.randint(0, 11, (1, 10))
    assert not torch.allclose(model(ids), other(ids), atol=1e-3)


# ------------------------------------------------------------------------------ causal / padding

@pytest.mark.parametrize("position", POSITIONS)
def test_future_token_never_changes_earlier_logits(position):
    model = make(position)
    ids = torch.randint(0, 11, (1, 16))
    n = 10  # latents at positions 6..15
    base = model(ids, num_latents=n)
    for p in (6, 9, 15):
        changed = ids.clone()
        changed[0, p] = (changed[0, p] + 1) % 11
        out = model(changed, num_latents=n)
        before = p - 6  # latents 0..before-1 read positions < p
        torch.testing.assert_close(out[:, :before], base[:, :before], rtol=0, atol=1e-6)
        assert (out[:, before:] - base[:, before:]).abs().amax(-1).min() > 1e-4  # every later latent changes


@pytest.mark.parametrize("position", POSITIONS)
def test_latent_sees_only_its_prefix_and_later_latents(position):
    """Latent i of ``(x, N)`` equals the last latent of ``(x[:s_i+1], i+1)``: right alignment and causality."""
    model = make(position)
    ids = torch.randint(0, 11, (1, 14))
    out = model(ids, num_latents=5)
    for i in range(5):
        s = 14 - 5 + i
        torch.testing.assert_close(out[:, i], model(ids[:, :s + 1], num_latents=i + 1)[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", POSITIONS)
def test_padding_never_affects_valid_positions(position):
    model = make(position)
    a, b = torch.randint(0, 11, (1, 16)), torch.randint(0, 11, (1, 9))
    lengths = torch.tensor([16, 9])
    outs = []
    for garbage in range(2):
        pad = torch.full((1, 7), garbage * 10, dtype=torch.long) if garbage else torch.randint(0, 11, (1, 7))
        outs.append(model(torch.cat([a, torch.cat([b, pad], dim=1)]), lengths, num_latents=6))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(outs[0][1], model(b, num_latents=6)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][0], model(a, num_latents=6)[0], rtol=1e-5, atol=1e-5)


def test_short_sequence_has_invalid_latents_that_nothing_attends():
    """With N > L the first N - L latents are invalid; the valid ones equal a run with N = L."""
    model = make()
    ids = torch.randint(0, 11, (1, 8))
    steps = latent_steps(torch.tensor([3]), 6)
    assert steps.tolist() == [[-1, -1, -1, 0, 1, 2]]
    out = model(ids, torch.tensor([3]), num_latents=6)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 3:], model(ids[:, :3], num_latents=3), rtol=1e-5, atol=1e-5)


def test_num_latents_per_call_and_logits_start_at_zero():
    model = PerceiverAR(tiny_ar()).eval()
    ids = torch.randint(0, 11, (2, 12))
    assert model(ids).shape == (2, 6, 11)
    assert model(ids, num_latents=12).shape == (2, 12, 11)
    assert model(ids, num_latents=1).shape == (2, 1, 11)
    assert torch.count_nonzero(model(ids)) == 0  # zero-initialised logits layer


# --------------------------------------------------------------------------------- positions

def test_absolute_tables_sinusoidal_frozen_and_random_learnable():
    table = sinusoid_table(5, 8)
    p, c = 3, 1
    assert math.isclose(table[p, c], math.sin(p * math.exp(-c * math.log(1e4) / 3)), rel_tol=1e-6)
    assert math.isclose(table[p, 4 + c], math.cos(p * math.exp(-c * math.log(1e4) / 3)), rel_tol=1e-6)
    frozen = PerceiverAR(tiny_ar(position_encoding="absolute"))
    torch.testing.assert_close(frozen.position_embeddings.data, sinusoid_table(25, 16))
    assert not frozen.position_embeddings.requires_grad
    learned = PerceiverAR(tiny_ar(position_encoding="absolute", position_init="random",
                                  learnable_position_embeddings=True)).train()
    learned.logits.weight.data.normal_()
    learned(torch.randint(0, 11, (1, 8))).sum().backward()
    assert learned.position_embeddings.grad is not None and learned.position_embeddings.grad.abs().sum() > 0


def test_grid_positions_sos_and_raster_order():
    model = PerceiverAR(tiny_ar(position_encoding="absolute", position_grid=(2, 3, 3)))
    index = torch.arange(6)[None]
    pos = model.token_positions(index, index < 5)
    assert pos[0].tolist() == [[1, 1, 1], [2, 2, 2], [2, 2, 3], [2, 2, 4], [2, 3, 2], [0, 0, 0]]
    assert model.config.position_table_sizes == (4, 5, 5)
    assert model.position_embeddings.shape == (14, 16)
    ids = torch.randint(0, 11, (1, 19))
    assert model(ids).shape == (1, 6, 11)
    with pytest.raises(ValueError, match="grid"):
        model(torch.randint(0, 11, (1, 20)))


# ------------------------------------------------------------------------------ context reduction

def _cross_inputs(model, ids, lengths=None, **kw):
    seen = {}

    def hook(module, args, kwargs):
        seen["kv"], seen["mask"] = args[1], args[2]

    handle = model.cross_attend.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(ids, lengths, **kw)
    finally:
        handle.remove()
    return seen


def test_context_reduction_is_off_by_default_and_in_eval():
    model = make()
    ids = torch.randint(0, 11, (2, 12))
    torch.testing.assert_close(model.train()(ids), model.eval()(ids))
    reduced = PerceiverAR(tiny_ar(train_input_positions=5, encoder_dropout_prob=0.5, latent_dropout_prob=0.5))
    reduced.load_state_dict(model.state_dict())
    torch.testing.assert_close(reduced.eval()(ids), model.eval()(ids))
    assert not torch.allclose(reduced.train()(ids), model(ids))


def test_train_input_positions_keeps_a_random_subset_of_keys():
    model = make("absolute", train_input_positions=7).train()  # absolute: every input row is distinct
    ids = torch.randint(0, 11, (3, 20))
    lengths = torch.tensor([20, 15, 6])
    seen = _cross_inputs(model, ids, lengths)
    assert seen["kv"].shape == (3, 7, 16)
    assert _cross_inputs(model.eval(), ids, lengths)["kv"].shape == (3, 20, 16)
    model.train()
    mask = seen["mask"]  # (B, N, K): causal over the kept original indices, padding never attended
    assert mask.shape == (3, 6, 7)
    full = model.embed(ids, model.token_positions(torch.arange(20).expand(3, 20), torch.arange(20) < lengths[:, None]))
    for b in range(3):
        n_valid = int(lengths[b])
        dist = torch.cdist(seen["kv"][b], full[b, :n_valid])  # valid inputs have distinct (token + position) rows
        hits = dist.min(dim=-1)
        kept = [int(j) for d, j in zip(hits.values, hits.indices) if d < 1e-6]
        num_pad = 7 - len(kept)
        assert kept == sorted(kept) and len(set(kept)) == len(kept)  # in order, distinct
        assert (hits.values[len(kept):] > 1e-3).all()  # kept padding (if any) comes last
        steps = latent_steps(lengths[b:b + 1], 6)[0]
        expected = torch.tensor([[j <= s for j in kept] + [False] * num_pad for s in steps.tolist()])
        assert torch.equal(mask[b], expected)
    model(ids, lengths).sum().backward()  # trains


def test_encoder_and_latent_dropout_remove_keys_only_in_training():
    model = make(encoder_dropout_prob=0.5).train()
    ids = torch.randint(0, 11, (64, 16))
    mask = _cross_inputs(model, ids, num_latents=16)["mask"]  # (B, N, M)
    last = mask[:, -1]  # the last latent sees every input unless dropped
    assert 0.4 < last.float().mean() < 0.6
    assert torch.equal(mask, mask[:, -1:, :] & mask)  # a dropped key is dropped for every latent
    lmodel = make(latent_dropout_prob=0.5).train()
    masks = []
    handle = lmodel.self_attends[0].register_forward_pre_hook(lambda module, args: masks.append(args[1]))
    lmodel(ids, num_latents=16)
    handle.remove()
    self_mask = masks[0]  # (B, N, N)
    assert self_mask.diagonal(dim1=1, dim2=2).all()  # the diagonal is always kept
    below = self_mask[:, -1, :-1].float().mean()
    assert 0.4 < below < 0.6 and not self_mask.triu(1).any()


# ------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, field", [
    (dict(num_latents=25), "num_latents"),
    (dict(max_wavelength=23), "max_wavelength"),
    (dict(rotary_fraction=0.0), "rotary_fraction"),
    (dict(rotary_fraction=1.5), "rotary_fraction"),
    (dict(num_self_attend_heads=6, num_latent_channels=12, rotary_fraction=0.25), "rotary_fraction"),
    (dict(position_grid=(4, 4)), "position_grid"),
    (dict(position_encoding="learned"), "position_encoding"),
    (dict(position_init="zeros"), "position_init"),
    (dict(train_input_positions=24), "train_input_positions"),
    (dict(encoder_dropout_prob=1.0), "encoder_dropout_prob"),
    (dict(latent_dropout_prob=-0.1), "latent_dropout_prob"),
    (dict(num_channels=15), "num_channels"),
    (dict(activation="swish"), "activation"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_ar(**overrides)


def test_config_type_errors_and_round_trip():
    with pytest.raises(TypeError, match="num_latents"):
        tiny_ar(num_latents=2.0)
    with pytest.raises(TypeError, match="learnable_position_embeddings"):
        tiny_ar(learnable_position_embeddings="yes")
    cfg = tiny_ar(position_encoding="absolute", position_grid=[2, 3, 3])
    assert cfg.position_grid == (2, 3, 3)
    assert PerceiverARConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(num_latents=3).num_latents == 3
    with pytest.raises(TypeError, match="PerceiverARConfig"):
        PerceiverAR(cfg.to_dict())


# -------------------------------------------------------------------------------------- inputs

def test_forward_errors_name_the_argument():
    model = make()
    ids = torch.randint(0, 11, (2, 10))
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.full((1, 10), 11))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.randint(0, 11, (1, 25)))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="num_latents"):
        model(ids, num_latents=11)
    with pytest.raises(ValueError, match="num_latents"):
        model(ids, num_latents=0)
    with pytest.raises(ValueError, match="lengths"):
        model(ids, torch.tensor([10, 0]))
    with pytest.raises(ValueError, match="lengths"):
        model(ids, torch.tensor([11, 3]))
    with pytest.raises(TypeError, match="lengths"):
        model(ids, torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------------------- registry / hub

def test_imagenet64_parameter_count_on_meta():
    model = create_model("perceiver-ar-imagenet64", device="meta")
    assert all(p.is_meta for p in model.parameters())
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert model.num_parameters() == 770_094_339 == get_entry("perceiver-ar-imagenet64").num_parameters
    assert model.position_embeddings.shape == (66 + 66 + 5, 1024)
    assert count(model.cross_attend) == 12_598_272
    assert count(model.self_attends[0]) == 12_596_224 and len(model.self_attends) == 60
    assert count(model.query_proj) == 1024 * 1024 + 1024
    assert count(model.logits) == 1024 * 259 + 259


def test_debug_variant_is_registered_and_runs():
    assert {"perceiver-ar-imagenet64", "perceiver-ar-debug"} <= set(list_models("perceiver-ar"))
    model = create_model("perceiver-ar-debug").eval()
    assert model.num_parameters() == get_entry("perceiver-ar-debug").num_parameters
    assert model(torch.randint(0, 259, (2, 20))).shape == (2, 8, 259)


@pytest.mark.parametrize("position", POSITIONS)
def test_save_load_round_trip(tmp_path, position):
    model = make(position, max_wavelength=40)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert isinstance(loaded, PerceiverAR) and loaded.config == model.config and not loaded.training
    ids = torch.randint(0, 11, (2, 12))
    lengths = torch.tensor([12, 7])
    torch.testing.assert_close(loaded(ids, lengths), model(ids, lengths), rtol=0, atol=0)
    if position == "absolute":
        assert not loaded.position_embeddings.requires_grad
