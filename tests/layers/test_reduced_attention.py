"""bf16 / fp16 training attention on CPU (perceivers.layers.reduced_attention) against SDPA and float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceivers.layers import attention as attention_module
from perceivers.layers.attention import Attention, sdpa_mask
from perceivers.layers.reduced_attention import unfused_attention, use_unfused_attention

B, H, N, M, D = 2, 3, 5, 11, 8


def _qkv(dtype: torch.dtype, requires_grad: bool = True):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, s, D, generator=g).to(dtype).requires_grad_(requires_grad) for s in (N, M, M)]


@pytest.mark.parametrize("mask_kind", [None, "keys", "full"])
def test_unfused_equals_sdpa_in_float64(mask_kind):
    g = torch.Generator().manual_seed(1)
    q, k, v = (t.double() for t in _qkv(torch.float32, requires_grad=False))
    mask = {None: None, "keys": torch.rand(B, M, generator=g) > 0.4,
            "full": torch.rand(B, N, M, generator=g) > 0.4}[mask_kind]
    if mask is not None:
        mask[0] = False  # a row without keys: sdpa_mask lets it attend everywhere (finite)
    keep, _ = sdpa_mask(mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(unfused_attention(q, k, v, keep), expected, rtol=1e-12, atol=1e-12)


def test_path_selection():
    q, k, v = _qkv(torch.bfloat16)
    assert use_unfused_attention(q, k, v, 0.0)
    assert not use_unfused_attention(q, k, v, 0.1)  # attention dropout: SDPA
    assert not use_unfused_attention(q, k, v, 0.0, max_elements=B * H * N * M - 1)  # long: the fused kernel
    with torch.no_grad():
        assert not use_unfused_attention(q, k, v, 0.0)  # inference: the fused forward is fast
    q32, k32, v32 = _qkv(torch.float32)
    assert not use_unfused_attention(q32, k32, v32, 0.0)  # the fp32 default never changes path


def _module_grads(dtype_ctx, attn, x_q, x_kv, mask):
    x_q, x_kv = x_q.clone().requires_grad_(), x_kv.clone().requires_grad_()
    attn.zero_grad(set_to_none=True)
    with dtype_ctx:
        out = attn(x_q, x_kv, mask)
    out.float().square().sum().backward()
    return out.float(), x_q.grad, x_kv.grad, attn.q_proj.weight.grad


@pytest.mark.parametrize("mask_kind", [None, "keys"])
def test_attention_under_bf16_autocast_matches_fp32(monkeypatch, mask_kind):
    """The bf16 training path (taken: spied) agrees with fp32 within bf16 tolerance (relative 2^-5 of the largest
    value: bf16 keeps 8 bits, and a few roundings compound; float32 agrees to ~1e-6, a wrong softmax or scale
    to ~1e-1)."""
    torch.manual_seed(0)
    attn = Attention(q_in_channels=16, kv_in_channels=12, qk_channels=16, v_channels=16, output_channels=16,
                     num_heads=2)
    x_q, x_kv = torch.randn(B, N, 16), torch.randn(B, M, 12)
    mask = None if mask_kind is None else torch.rand(B, M) > 0.3
    calls = []
    real = attention_module.unfused_attention
    monkeypatch.setattr(attention_module, "unfused_attention", lambda *a: calls.append(1) or real(*a))
    low = _module_grads(torch.autocast("cpu", torch.bfloat16), attn, x_q, x_kv, mask)
    assert calls, "the unfused bf16 path was not taken"
    ref = _module_grads(torch.autocast("cpu", enabled=False), attn, x_q, x_kv, mask)
    for a, b in zip(low, ref, strict=True):
        assert (a - b).abs().max() <= 2**-5 * b.abs().max()


def test_shared_projection_input_is_cast_once_under_autocast():
    """Self-attention's q/k/v (and cross-attention's k/v) projections share one bf16 cast of their input: fewer
    aten::_to_copy calls than three independent casts, the same forward values (autocast casts alike)."""
    torch.manual_seed(0)
    attn = Attention(q_in_channels=16, kv_in_channels=16, qk_channels=16, v_channels=16, output_channels=16,
                     num_heads=2)
    x = torch.randn(B, N, 16)
    assert attention_module.autocast_input(x) is x  # autocast off: untouched
    with torch.autocast("cpu", torch.bfloat16):
        assert attention_module.autocast_input(x).dtype == torch.bfloat16

    def forward_and_casts(shared: bool):
        with torch.profiler.profile() as prof, torch.autocast("cpu", torch.bfloat16), torch.no_grad():
            out = attn(x, x) if shared else attn(x, x.clone())
        return out, sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    shared, shared_casts = forward_and_casts(True)
    separate, separate_casts = forward_and_casts(False)
    assert torch.equal(shared, separate)
    assert shared_casts == separate_casts - 1  # x once instead of x for q and once more for k/v
