"""Cross-attention inference in key/value chunks (perceivers.layers.chunked_attention) == the unchunked block."""

from __future__ import annotations

import pytest
import torch

from perceivers.layers import chunked_attention
from perceivers.layers.blocks import CrossAttentionBlock
from perceivers.layers.chunked_attention import chunk_length, chunked_cross_attention

B, N, M, C_Q, C_KV = 3, 4, 23, 16, 6


def _block(heads: int = 2) -> CrossAttentionBlock:
    torch.manual_seed(0)
    block = CrossAttentionBlock(q_channels=C_Q, kv_channels=C_KV, num_heads=heads, qk_channels=8, v_channels=8,
                                widening_factor=2).eval()
    for p in block.parameters():  # non-trivial norms and biases
        p.data.add_(0.1 * torch.randn_like(p))
    return block


def _inputs():
    g = torch.Generator().manual_seed(1)
    x_q, x_kv = torch.randn(B, N, C_Q, generator=g), 3 * torch.randn(B, M, C_KV, generator=g)
    mask = torch.rand(B, M, generator=g) > 0.5
    mask[1] = False  # no key at all: the official zero attention result
    mask[2, :10] = False  # the first chunks of row 2 have no key
    return x_q, x_kv, mask


@pytest.mark.parametrize("chunk", [1, 4, 7, M])
@pytest.mark.parametrize("masked", [False, True])
def test_chunks_equal_the_whole_within_float32_rounding(chunk, masked):
    block = _block()
    x_q, x_kv, mask = _inputs()
    mask = mask if masked else None
    with torch.no_grad():
        whole = block.attention(block.q_norm(x_q), block.kv_norm(x_kv), mask)
        chunked = chunked_cross_attention(block.attention, block.q_norm(x_q), x_kv, block.kv_norm, mask, chunk)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    if masked:  # the row without keys returns the output bias exactly, as unchunked
        torch.testing.assert_close(chunked[1], block.attention.o_proj.bias.expand(N, -1), rtol=0, atol=0)


def test_block_chunks_long_inputs_only_without_autograd(monkeypatch):
    block = _block()
    x_q, x_kv, mask = _inputs()
    calls = []
    real = chunked_attention.chunked_cross_attention
    monkeypatch.setattr(chunked_attention, "CHUNK_ELEMENTS", B * C_KV * 5)  # 5 inputs a chunk
    monkeypatch.setattr("perceivers.layers.blocks.chunked_cross_attention",
                        lambda *a: calls.append(a[-1]) or real(*a))
    with torch.inference_mode():
        out = block(x_q, x_kv, mask)
    assert calls == [5]
    reference = block(x_q, x_kv, mask)  # autograd on: the unchunked path
    assert calls == [5]
    torch.testing.assert_close(out, reference.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        block(x_q, x_kv[:, :5], mask[:, :5])  # one chunk: unchunked
    assert calls == [5]


def test_unequal_qk_and_v_widths_stay_unchunked(monkeypatch):
    block = CrossAttentionBlock(q_channels=C_Q, kv_channels=C_KV, qk_channels=8, v_channels=10).eval()
    x_q, x_kv, mask = _inputs()
    monkeypatch.setattr(chunked_attention, "CHUNK_ELEMENTS", B * C_KV * 5)
    monkeypatch.setattr("perceivers.layers.blocks.chunked_cross_attention", None)  # calling it would fail
    with torch.no_grad():
        assert block(x_q, x_kv, mask).shape == (B, N, C_Q)


def test_chunk_length():
    assert chunk_length(32, 64) == (1 << 22) // 2048
    assert chunk_length(4, 10, chunk_elements=7) == 1


def test_bf16_weights_inference_stays_within_bf16_tolerance_of_fp32(monkeypatch):
    """A block with bf16 weights and inputs (chunked and not) against fp32: within 2^-4 of the output's scale
    (bf16 keeps 8 bits; a wrong merge or softmax is off by the scale itself)."""
    block = _block()
    x_q, x_kv, mask = _inputs()
    with torch.no_grad():
        ref = block(x_q, x_kv, mask)
        low = block.to(torch.bfloat16)
        whole = low(x_q.bfloat16(), x_kv.bfloat16(), mask)
        monkeypatch.setattr(chunked_attention, "CHUNK_ELEMENTS", B * C_KV * 5)
        chunked = low(x_q.bfloat16(), x_kv.bfloat16(), mask)
    assert whole.dtype == chunked.dtype == torch.bfloat16
    for out in (whole, chunked):
        assert (out.float() - ref).abs().max() <= 2**-4 * ref.abs().max()
