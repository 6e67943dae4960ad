"""Every registered variant, at its debug size (``config.debug_size()``: the same structure, tiny widths): a forward
pass, a backward pass that reaches every trainable parameter, and an exact save/load round trip."""

from __future__ import annotations

import pytest
import torch
from testkit.models import float_tensors

import perceivers
from perceivers.models import get_entry, list_models


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: thread hand-offs would dominate
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list_models())
def test_variant_at_debug_size_trains_and_round_trips(name, tmp_path):
    entry = get_entry(name)
    full = entry.build_config()
    config = full.debug_size()
    assert type(config) is type(full)
    torch.manual_seed(0)
    model = entry.model_cls(config)
    assert model.num_parameters() < 2_000_000, "debug size should be small"
    kwargs = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    outputs = float_tensors(model(**kwargs))
    assert outputs and all(torch.isfinite(t).all() for t in outputs)
    sum(t.square().mean() for t in outputs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    loaded = perceivers.from_pretrained(model.save_pretrained(tmp_path / name))
    assert type(loaded) is type(model) and loaded.config == config
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        for a, b in zip(float_tensors(loaded(**kwargs)), float_tensors(model(**kwargs)), strict=True):
            assert torch.equal(a, b)
