"""The truncated-normal initialiser: its distribution (wide margins, fixed seed) and that no model build
goes through torch 2.13's ``nn.init.trunc_normal_``, which redraws full-size tensors until none is out of range
(tens of seconds for a 200M-parameter model on 2 cores)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from perceivers import create_model
from perceivers.layers.init import init_trunc_normal, init_variance_scaling

# Moments of a standard normal truncated to [-2, 2].
TRUNC_STD = 0.87962566103423978
P_WITHIN_1 = math.erf(1 / math.sqrt(2)) / math.erf(2 / math.sqrt(2))  # P(|Z| <= 1 | |Z| <= 2) = 0.7152


@pytest.mark.parametrize("shape", [(1000, 1000), (500, 2000)])
def test_trunc_normal_distribution(shape):
    torch.manual_seed(0)
    std = 0.37
    x = torch.empty(shape)
    init_trunc_normal(x, std)
    z = x.double() / std  # N = 1e6: the standard errors are about 1e-3, the margins 10 times that or more
    assert z.abs().max() <= 2.0 + 1e-6
    assert z.abs().max() > 1.99  # the tails are reached, not clipped short
    assert abs(z.mean().item()) < 0.01
    assert z.std().item() == pytest.approx(TRUNC_STD, abs=0.01)
    assert (z.abs() <= 1).double().mean().item() == pytest.approx(P_WITHIN_1, abs=0.01)
    assert (z > 1.5).double().mean().item() == pytest.approx((z < -1.5).double().mean().item(), abs=0.005)


def test_trunc_normal_non_contiguous_low_precision_and_meta():
    torch.manual_seed(0)
    x = torch.empty(400, 300).t()  # non-contiguous
    init_trunc_normal(x, 2.0)
    assert x.abs().max() <= 4.0 and x.std().item() == pytest.approx(2.0 * TRUNC_STD, abs=0.05)
    h = torch.empty(300, 400, dtype=torch.bfloat16)
    init_trunc_normal(h, 0.5)
    assert h.dtype == torch.bfloat16 and h.float().std().item() == pytest.approx(0.5 * TRUNC_STD, abs=0.02)
    init_trunc_normal(torch.empty(3, 3, device="meta"), 1.0)  # a no-op


def test_variance_scaling_std():
    torch.manual_seed(0)
    w = torch.empty(512, 256)
    init_variance_scaling(w, fan_in=256)
    assert w.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.02)


def test_model_builds_never_call_torch_trunc_normal(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nn.init.trunc_normal_ is called")

    monkeypatch.setattr(nn.init, "trunc_normal_", refuse)
    for name in ("perceiver-io-language-debug", "perceiver-ar-debug", "hip-debug"):
        model = create_model(name)
        assert all(torch.isfinite(p).all() for p in model.parameters())
