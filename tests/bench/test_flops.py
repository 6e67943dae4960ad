"""The analytic matmul FLOP count of the bench classifier: a hand count, and torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from perceivers.bench.peers import build
from perceivers.bench.spec import BenchSpec, matmul_flops
from perceivers.core.errors import ConfigError


def test_tiny_count_matches_a_hand_count():
    # tiny: 8 input channels, 4 latents x 16, 2 self-attends, widening 2 / 2, 8-channel query, 5 classes; M = 10
    cross = (4 * 16 * 8          # q: latents 16 -> 8 (qk = input channels)
             + 2 * 10 * 8 * 8    # k and v: inputs 8 -> 8
             + 2 * 4 * 10 * 8    # scores and weighted sum: 4 queries x 10 keys x 8
             + 4 * 8 * 16        # output 8 -> 16
             + 2 * 4 * 16 * 32)  # MLP 16 -> 32 -> 16
    self_attend = 4 * 4 * 16 * 16 + 2 * 4 * 4 * 16 + 2 * 4 * 16 * 32  # q, k, v, o; scores and sum; MLP
    decoder = (8 * 16 + 2 * 4 * 16 * 16 + 2 * 16 * 4 + 16 * 8  # q 8 -> 16, k/v 16 -> 16, attention, o 16 -> 8
               + 2 * 8 * 8 + 8 * 5)                            # MLP 8 -> 8 -> 8, class head 8 -> 5
    macs = cross + 2 * self_attend + decoder
    assert macs == 27048
    spec = BenchSpec.tiny()
    assert matmul_flops(spec, 10, 3, training=False) == 2 * macs * 3
    assert matmul_flops(spec, 10, 3, training=True) == 3 * 2 * macs * 3


@pytest.mark.parametrize("impl, module", [("transformers", "transformers"), ("lucidrains", "perceiver_pytorch")])
def test_count_matches_torch_flop_counter(impl, module):
    """transformers and lucidrains run attention as plain matmuls, so torch's counter sees every one; ours uses
    SDPA, which the counter does not count on CPU."""
    pytest.importorskip(module)
    spec = BenchSpec.tiny().replace(cross_widening=4, self_widening=4)  # lucidrains' MLPs are always 4 wide
    _, forward, options, _ = build(impl, spec)
    x = torch.randn(3, 10, spec.input_channels)
    with FlopCounterMode(display=False) as counter:
        forward(x)
    assert counter.get_total_flops() == matmul_flops(spec, 10, 3, training=False, **options)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(forward(x), torch.zeros(3, dtype=torch.long)).backward()
    assert counter.get_total_flops() == matmul_flops(spec, 10, 3, training=True, **options)


def test_bench_spec_is_the_issue_configuration():
    model, _, _, _ = build("ours", BenchSpec())
    assert sum(p.numel() for p in model.parameters()) == 21_887_784
    with pytest.raises(ConfigError, match="num_latents=0 is invalid"):
        BenchSpec(num_latents=0)
