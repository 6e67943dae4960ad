"""``torch.compile(fullgraph=True)`` traces every model family at debug size without a graph break, and the compiled
model returns what the eager one does. Dynamo's ``eager`` backend (the traced graph run op by op) keeps this fast;
the Perceiver AR decode step also runs under ``aot_eager`` (functionalised in-place cache writes). Inductor is not
exercised here: compiling its C++ kernels takes minutes on a shared 2-core CPU (docs/performance.md)."""

from __future__ import annotations

import pytest
import torch
from testkit.models import float_tensors

from perceivers.generation import PerceiverARCache
from perceivers.models import get_entry

FAMILIES = {
    "perceiver-io-image": "perceiver-io-imagenet-fourier",
    "perceiver-io-flow": "perceiver-io-flow-debug",
    "perceiver-io-multimodal": "perceiver-io-multimodal-debug",
    "perceiver-io-mlm": "perceiver-io-language-mlm",
    "perceiver-io-audio": "perceiver-io-audioset-debug",
    "perceiver": "perceiver-imagenet",
    "hip": "hip-debug",
    "hip-classifier": "hip-mae-digits-classifier",
    "perceiver-ar": "perceiver-ar-debug",
}
pytestmark = pytest.mark.usefixtures("one_thread")


def _debug_model(name: str) -> torch.nn.Module:
    entry = get_entry(name)
    torch.manual_seed(0)
    return entry.model_cls(entry.build_config().debug_size()).eval()


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_every_family_compiles_without_graph_breaks(family):
    model = _debug_model(FAMILIES[family])
    kwargs = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    expected = float_tensors(model(**kwargs))
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # a graph break raises
    got = float_tensors(compiled(**kwargs))
    assert expected and len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@torch.no_grad()
def test_perceiver_ar_decode_step_compiles_and_matches_eager():
    """Prompt pass eager, then one-token steps through ``torch.compile`` (a new length per step: Dynamo
    recompiles once, then treats it as dynamic): same logits and same cache contents as eager steps."""
    model = _debug_model(FAMILIES["perceiver-ar"])
    caches = [PerceiverARCache.for_model(model, batch_size=2, latent_capacity=8) for _ in range(2)]
    prompt = torch.randint(0, model.config.vocab_size, (2, 6))
    for cache in caches:
        model(prompt, num_latents=4, cache=cache)
    step = torch.compile(lambda ids, cache: model(ids, cache=cache), fullgraph=True, backend="aot_eager")
    for _ in range(3):
        ids = torch.randint(0, model.config.vocab_size, (2, 1))
        torch.testing.assert_close(step(ids, caches[1]), model(ids, cache=caches[0]), rtol=0, atol=0)
    eager, compiled = caches
    assert compiled.max_num_tokens == eager.max_num_tokens == 9 and torch.equal(compiled.num_tokens, eager.num_tokens)
    for a, b in zip(compiled.layers, eager.layers, strict=True):
        assert a.length == b.length and torch.equal(a.k[:, :, :a.length], b.k[:, :, :b.length])
