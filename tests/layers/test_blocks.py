"""MLP, cross-attention and self-attention blocks, checked against hand-written compositions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from testkit.models import randomize_

from perceivers.layers.blocks import (
    MLP,
    CrossAttentionBlock,
    SelfAttentionBlock,
    activation_fn,
)

B, N, M, CQ, CKV = 2, 3, 5, 6, 10


def _inputs():
    return torch.randn(B, N, CQ) * 3 + 1, torch.randn(B, M, CKV) * 2 - 1


def _block(**kw) -> CrossAttentionBlock:
    kw = {"q_channels": CQ, "kv_channels": CKV, "num_heads": 2, **kw}
    return randomize_(CrossAttentionBlock(**kw)).eval()


@pytest.mark.parametrize("residual", [True, False])
def test_cross_attention_block_composition(residual):
    blk = _block(use_query_residual=residual)
    x_q, x_kv = _inputs()
    attn = blk.attention(blk.q_norm(x_q), blk.kv_norm(x_kv))
    x = x_q + attn if residual else attn
    expected = x + blk.mlp(blk.mlp_norm(x))
    torch.testing.assert_close(blk(x_q, x_kv), expected, rtol=0, atol=1e-6)


def test_query_residual_changes_output_by_the_unnormalised_query():
    on, off = _block(use_query_residual=True), _block(use_query_residual=False)
    off.load_state_dict(on.state_dict())
    x_q, x_kv = _inputs()
    attn = on.attention(on.q_norm(x_q), on.kv_norm(x_kv))
    # on: MLP input is attn + x_q (raw query); normalising the residual would give another result
    x = attn + x_q
    torch.testing.assert_close(on(x_q, x_kv), x + on.mlp(on.mlp_norm(x)), rtol=0, atol=1e-6)
    x_wrong = attn + on.q_norm(x_q)
    assert not torch.allclose(on(x_q, x_kv), x_wrong + on.mlp(on.mlp_norm(x_wrong)), atol=1e-3)
    assert not torch.allclose(on(x_q, x_kv), off(x_q, x_kv), atol=1e-3)


def test_cross_attention_uses_two_layer_norms_with_eps_1e5():
    blk = _block()
    assert blk.q_norm is not blk.kv_norm
    assert blk.q_norm.normalized_shape == (CQ,) and blk.kv_norm.normalized_shape == (CKV,)
    assert blk.q_norm.eps == blk.kv_norm.eps == blk.mlp_norm.eps == 1e-5


def test_qk_channels_default_kv():
    blk = CrossAttentionBlock(q_channels=CQ, kv_channels=CKV, num_heads=1)
    assert blk.attention.q_proj.out_features == CKV
    assert blk.attention.k_proj.out_features == CKV
    assert blk.attention.v_proj.out_features == CKV  # v defaults to qk
    assert blk.attention.o_proj.out_features == CQ  # output width = query width


def test_qk_channels_default_q():
    blk = CrossAttentionBlock(q_channels=CQ, kv_channels=CKV, num_heads=1, shape_for_attn="q")
    assert blk.attention.q_proj.out_features == CQ
    assert blk.attention.v_proj.out_features == CQ
    assert blk.attention.o_proj.out_features == CQ


def test_explicit_qk_and_v_channels():
    blk = CrossAttentionBlock(q_channels=CQ, kv_channels=CKV, num_heads=2, qk_channels=4, v_channels=14,
                              shape_for_attn="q")
    a = blk.attention
    assert (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features, a.o_proj.out_features) == (
        4, 4, 14, CQ)
    x_q, x_kv = _inputs()
    assert blk(x_q, x_kv).shape == (B, N, CQ)


def test_v_channels_defaults_to_explicit_qk():
    blk = CrossAttentionBlock(q_channels=CQ, kv_channels=CKV, qk_channels=4)
    assert blk.attention.v_proj.out_features == 4


def test_cross_attention_passes_mask():
    blk = _block()
    x_q, x_kv = _inputs()
    mask = torch.zeros(B, M, dtype=torch.bool)
    mask[:, :2] = True
    torch.testing.assert_close(blk(x_q, x_kv, mask), blk(x_q, x_kv[:, :2]), rtol=1e-5, atol=1e-6)


def test_invalid_shape_for_attn():
    with pytest.raises(ValueError, match="shape_for_attn"):
        CrossAttentionBlock(q_channels=4, kv_channels=4, shape_for_attn="v")


def test_self_attention_block_composition():
    blk = randomize_(SelfAttentionBlock(channels=CQ, num_heads=3)).eval()
    x = torch.randn(B, N, CQ)
    h = blk.attention_norm(x)
    y = x + blk.attention(h, h)
    expected = y + blk.mlp(blk.mlp_norm(y))
    torch.testing.assert_close(blk(x), expected, rtol=0, atol=1e-6)
    a = blk.attention
    assert a.q_proj.out_features == a.v_proj.out_features == a.o_proj.out_features == CQ


def test_self_attention_block_explicit_widths():
    blk = SelfAttentionBlock(channels=CQ, num_heads=2, qk_channels=4, v_channels=8, widening_factor=3)
    a = blk.attention
    assert (a.q_proj.out_features, a.v_proj.out_features, a.o_proj.out_features) == (4, 8, CQ)
    assert blk.mlp.fc1.out_features == 3 * CQ


def _gelu_tanh_by_hand(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def test_mlp_default_is_tanh_gelu():
    mlp = randomize_(MLP(CQ, widening_factor=2))
    assert mlp.activation == "gelu_tanh"
    x = torch.randn(B, N, CQ) * 3
    h = mlp.fc1(x)
    torch.testing.assert_close(mlp(x), mlp.fc2(_gelu_tanh_by_hand(h)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mlp(x), mlp.fc2(F.gelu(h)), atol=1e-5)  # not the exact erf GELU
    assert mlp.fc1.out_features == 2 * CQ and mlp.fc2.out_features == CQ


@pytest.mark.parametrize("name,fn", [
    ("gelu", lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))),
    ("sq_relu", lambda h: torch.clamp(h, min=0) ** 2),
    ("relu", lambda h: torch.clamp(h, min=0)),
    ("gelu_tanh", _gelu_tanh_by_hand),
])
def test_mlp_activations(name, fn):
    mlp = randomize_(MLP(CQ, activation=name))
    x = torch.randn(B, N, CQ) * 3
    torch.testing.assert_close(mlp(x), mlp.fc2(fn(mlp.fc1(x))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gelu_tanh", "gelu", "sq_relu", "relu", "geglu"])
def test_mlp_inference_activation_in_place_gives_the_same_values(name):
    mlp = randomize_(MLP(CQ, widening_factor=2, activation=name))
    x = torch.randn(B, N, CQ) * 3
    with torch.no_grad():
        h = mlp.fc1(x)
        expected = activation_fn(name, h.clone())
        out = activation_fn(name, h, inplace=True)
        assert torch.equal(out, expected)
        if name != "geglu":  # overwritten: no second buffer of the widest activation
            assert out.data_ptr() == h.data_ptr()
        assert torch.equal(mlp(x), mlp.fc2(expected))
    assert torch.equal(mlp(x).detach(), mlp.fc2(expected))  # autograd path: out of place, same values


@pytest.mark.parametrize("name", ["gelu_tanh", "sq_relu", "geglu"])
def test_mlp_inference_runs_long_inputs_in_row_chunks_with_the_same_result(name, monkeypatch):
    import perceivers.layers.blocks as blocks

    mlp = randomize_(MLP(CQ, widening_factor=2, activation=name)).eval()
    x = torch.randn(3, 7, CQ) * 3  # 21 rows of a hidden width 12 (24 for GEGLU): 252 or 504 values
    with torch.no_grad():
        whole = mlp(x)
    widths = []
    monkeypatch.setattr(blocks, "MLP_CHUNK_VALUES", 5 * mlp.fc1.out_features)  # 5 rows a chunk: 5 chunks
    handle = mlp.fc1.register_forward_hook(lambda m, a, out: widths.append(a[0].shape[0]))
    with torch.no_grad():
        hooked = mlp(x)  # a hook on fc1 sees the whole input: no chunks
    handle.remove()
    assert widths == [3] and torch.equal(hooked, whole)
    calls = []
    real_linear = F.linear
    monkeypatch.setattr(F, "linear", lambda inp, w, b=None: calls.append(inp.shape) or real_linear(inp, w, b))
    with torch.no_grad():
        chunked = mlp(x)
    assert [c[0] for c in calls[::2]] == [5, 5, 5, 5, 1] and chunked.shape == x.shape
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    calls.clear()
    out = mlp(x.requires_grad_())  # autograd: one pass over every row, so the backward sees the whole graph
    assert [c[0] for c in calls] == [3, 3] and out.requires_grad
    torch.testing.assert_close(out.detach(), whole, rtol=1e-5, atol=1e-5)
    mlp.train()  # dropout 0: training mode without autograd still chunks; with dropout it would not
    calls.clear()
    with torch.no_grad():
        mlp(x)
    assert len(calls) == 10


def test_activations_differ():
    x = torch.linspace(-3, 3, 101)
    outs = {n: activation_fn(n, x) for n in ("gelu_tanh", "gelu", "sq_relu", "relu")}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outs[a], outs[b], atol=1e-5), (a, b)
    # tanh and erf GELU are close but not equal
    assert (outs["gelu_tanh"] - outs["gelu"]).abs().max() < 1e-3


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        MLP(4, activation="swish")
    with pytest.raises(ValueError, match="activation"):
        activation_fn("swish", torch.zeros(1))


def test_mlp_dropout_only_in_train_mode():
    mlp = randomize_(MLP(16, dropout_prob=0.5))
    x = torch.randn(4, 16)
    mlp.eval()
    expected = mlp.fc2(_gelu_tanh_by_hand(mlp.fc1(x)))
    torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-5)
    mlp.train()
    assert not torch.allclose(mlp(x), expected, atol=1e-4)
