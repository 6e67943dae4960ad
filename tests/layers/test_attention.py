"""Attention against a naive float64 reference (official ``perceiver.py`` ``attend`` semantics)."""

from __future__ import annotations

import math

import pytest
import torch
from testkit.models import randomize_

from perceivers.layers.attention import Attention

B, N, M = 2, 5, 7
Q_IN, KV_IN, QK, V, OUT, H = 6, 9, 8, 12, 5, 4


def naive_attention(attn: Attention, x_q, x_kv, mask=None, *, heads_layout="contiguous"):
    """softmax(Q K^T / sqrt(d_head)) V per head, heads = contiguous channel slices, in float64.

    A query row with no attendable key gets an attention result of exactly zero (official wipe).
    """
    d = torch.float64

    def lin(layer, x):
        return x.to(d) @ layer.weight.to(d).T + layer.bias.to(d)

    q, k, v = lin(attn.q_proj, x_q), lin(attn.k_proj, x_kv), lin(attn.v_proj, x_kv)
    h = attn.num_heads
    dqk, dv = q.shape[-1] // h, v.shape[-1] // h
    b, n, m = q.shape[0], q.shape[1], k.shape[1]
    if mask is None:
        full = torch.ones(b, n, m, dtype=torch.bool)
    elif mask.dim() == 2:
        full = mask[:, None, :].expand(b, n, m)
    else:
        full = mask
    heads = []
    for i in range(h):
        if heads_layout == "contiguous":
            qh = q[..., i * dqk:(i + 1) * dqk]
            kh = k[..., i * dqk:(i + 1) * dqk]
            vh = v[..., i * dv:(i + 1) * dv]
        else:  # interleaved channels (a wrong layout, used to show the test discriminates)
            qh, kh, vh = q[..., i::h], k[..., i::h], v[..., i::h]
        logits = qh @ kh.transpose(-1, -2) / math.sqrt(dqk)
        logits = logits.masked_fill(~full, -1e30)
        probs = torch.softmax(logits, dim=-1)
        heads.append(probs @ vh)
    out = torch.cat(heads, dim=-1)
    out = out * full.any(-1, keepdim=True).to(d)  # wipe fully masked rows
    return lin(attn.o_proj, out)


@pytest.fixture
def attn():
    a = Attention(q_in_channels=Q_IN, kv_in_channels=KV_IN, qk_channels=QK, v_channels=V, output_channels=OUT,
                  num_heads=H)
    return randomize_(a).eval()


@pytest.fixture
def inputs():
    return torch.randn(B, N, Q_IN), torch.randn(B, M, KV_IN)


def test_projection_shapes(attn):
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (QK, QK, V)
    assert attn.o_proj.in_features == V and attn.o_proj.out_features == OUT


def test_matches_naive_reference_without_mask(attn, inputs):
    out = attn(*inputs)
    assert out.shape == (B, N, OUT)
    torch.testing.assert_close(out.double(), naive_attention(attn, *inputs), rtol=1e-5, atol=1e-5)


def test_heads_are_contiguous_channel_slices(attn, inputs):
    """The reference with interleaved heads, or with a single head, gives other numbers: the match
    above pins heads to contiguous channel slices and the scale to 1/sqrt(qk/H)."""
    ref = naive_attention(attn, *inputs)
    out = attn(*inputs).double()
    assert not torch.allclose(out, naive_attention(attn, *inputs, heads_layout="interleaved"), atol=1e-3)
    single_head = Attention(q_in_channels=Q_IN, kv_in_channels=KV_IN, qk_channels=QK, v_channels=V,
                            output_channels=OUT, num_heads=1)
    single_head.load_state_dict(attn.state_dict())
    assert not torch.allclose(single_head.eval()(*inputs).double(), ref, atol=1e-3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_matches_naive_reference_with_key_padding_mask(attn, inputs):
    mask = torch.tensor([[True, True, False, True, False, False, True],
                         [False, True, True, True, True, True, False]])
    out = attn(*inputs, mask)
    torch.testing.assert_close(out.double(), naive_attention(attn, *inputs, mask), rtol=1e-5, atol=1e-5)
    # the mask matters
    assert not torch.allclose(out, attn(*inputs), atol=1e-4)


def test_masked_keys_are_equivalent_to_removed_keys(attn, inputs):
    x_q, x_kv = inputs
    keep = torch.tensor([0, 2, 3, 6])
    mask = torch.zeros(B, M, dtype=torch.bool)
    mask[:, keep] = True
    torch.testing.assert_close(attn(x_q, x_kv, mask), attn(x_q, x_kv[:, keep]), rtol=1e-5, atol=1e-6)


def test_matches_naive_reference_with_full_mask(attn, inputs):
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(B, N, M, generator=g) > 0.5
    mask[:, :, 0] |= ~mask.any(-1)  # no fully masked row here
    out = attn(*inputs, mask)
    torch.testing.assert_close(out.double(), naive_attention(attn, *inputs, mask), rtol=1e-5, atol=1e-5)


def test_fully_masked_batch_returns_exactly_output_bias(attn, inputs):
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[1] = False  # every key of example 1 is masked
    out = attn(*inputs, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], attn.o_proj.bias.detach().expand(N, OUT))
    torch.testing.assert_close(out[0], attn(*inputs)[0])


def test_fully_masked_row_in_full_mask_returns_exactly_output_bias(attn, inputs):
    mask = torch.ones(B, N, M, dtype=torch.bool)
    mask[0, 2] = False  # one query row of example 0 sees no key
    mask[1, 0, 3:] = False  # partially masked row
    out = attn(*inputs, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, 2], attn.o_proj.bias.detach())
    # other rows are untouched by the wipe and follow the reference
    ref = naive_attention(attn, *inputs, mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0, 1], attn.o_proj.bias.detach(), atol=1e-3)


def test_fully_masked_rows_with_extreme_inputs_are_finite(attn):
    x_q = torch.full((B, N, Q_IN), 100.0)
    x_kv = torch.full((B, M, KV_IN), -100.0)
    mask = torch.zeros(B, N, M, dtype=torch.bool)
    mask[0, 0, 0] = True
    out = attn(x_q, x_kv, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], attn.o_proj.bias.detach().expand(N, OUT))


def test_gradient_through_fully_masked_rows_is_finite(attn, inputs):
    x_q, x_kv = (t.clone().requires_grad_() for t in inputs)
    mask = torch.zeros(B, M, dtype=torch.bool)
    mask[0, :3] = True
    attn(x_q, x_kv, mask).sum().backward()
    assert torch.isfinite(x_q.grad).all() and torch.isfinite(x_kv.grad).all()
    assert torch.equal(x_kv.grad[1], torch.zeros_like(x_kv.grad[1]))  # masked example sees nothing


def test_attention_probability_dropout_only_in_train_mode(inputs):
    a = Attention(q_in_channels=Q_IN, kv_in_channels=KV_IN, qk_channels=QK, v_channels=V, output_channels=OUT,
                  num_heads=H, dropout_prob=0.5)
    randomize_(a)
    a.eval()
    ref = naive_attention(a, *inputs)
    torch.testing.assert_close(a(*inputs).double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a(*inputs), a(*inputs), rtol=0, atol=0)
    a.train()
    torch.manual_seed(1)
    train1 = a(*inputs)
    train2 = a(*inputs)
    assert not torch.allclose(train1.double(), ref, atol=1e-3)
    assert not torch.allclose(train1, train2, atol=1e-4)
    torch.manual_seed(1)
    torch.testing.assert_close(a(*inputs), train1, rtol=0, atol=0)  # seeded dropout is reproducible


def test_zero_dropout_is_identical_in_train_and_eval(attn, inputs):
    eval_out = attn(*inputs)
    attn.train()
    assert torch.equal(attn(*inputs), eval_out)


@pytest.mark.parametrize("field", ["qk_channels", "v_channels"])
def test_channels_must_divide_heads(field):
    kwargs = dict(q_in_channels=4, kv_in_channels=4, qk_channels=8, v_channels=8, output_channels=4, num_heads=4)
    kwargs[field] = 6
    with pytest.raises(ValueError, match=field):
        Attention(**kwargs)
