"""A cached Perceiver AR decode step never waits for the device.

On CUDA ``torch.cuda.set_sync_debug_mode("error")`` would say so directly; these tests run anywhere: the step
runs under modes that raise on every host read of a tensor value (``.item()``, ``int()``/``bool()``/``float()``
of a tensor, ``.tolist()``, ``nonzero``, boolean-mask indexing, ``torch.equal``). Values are checked where the
data enters instead: the prompt in ``generate``, the ids of an uncached or cache-filling forward.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from perceivers.generation import CachedDecoder, PerceiverARCache, generate
from perceivers.generation.layout import column_major_linears
from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig

aten = torch.ops.aten
SYNCING_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
               aten.equal.default, aten.is_nonzero.default}
SYNCING_METHODS = {Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
                   Tensor.__index__}


class ForbidHostReads(TorchDispatchMode):
    """Raises on the aten ops that copy a tensor value to the host (boolean indices run ``nonzero``)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            isinstance(i, Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        if func in SYNCING_OPS or bool_index:
            raise AssertionError(f"host sync in a decode step: {func}")
        return func(*args, **(kwargs or {}))


class ForbidHostMethods(TorchFunctionMode):
    """Raises on the tensor methods that read values on the host (``.tolist()`` of a CPU tensor never reaches
    the dispatcher, so the dispatch mode alone would miss it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCING_METHODS:
            raise AssertionError(f"host sync in a decode step: Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


class no_host_reads:  # noqa: N801  (used as a context manager)
    def __enter__(self):
        self.modes = [ForbidHostMethods(), ForbidHostReads()]
        for mode in self.modes:
            mode.__enter__()

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


def tiny(**overrides) -> PerceiverAR:
    base = dict(vocab_size=11, max_context_length=24, num_latents=6, num_channels=16, num_latent_channels=12,
                num_self_attend_layers=2, num_cross_attend_heads=2, num_self_attend_heads=3,
                cross_attend_widening_factor=2, self_attend_widening_factor=2)
    torch.manual_seed(0)
    return PerceiverAR(PerceiverARConfig(**(base | overrides))).eval()


CONFIGS = {
    "rotary": {},
    "absolute": dict(position_encoding="absolute"),
    "grid": dict(position_encoding="absolute", position_grid=(2, 3, 3)),
}


def test_the_guards_catch_host_reads():
    x = torch.tensor([1, 2, 3])
    for read in (lambda: int(x.max()), lambda: bool(x.any()), lambda: x.tolist(), lambda: x[x > 1],
                 lambda: x.sum().item(), lambda: float(x[0]), lambda: torch.equal(x, x)):
        with pytest.raises(AssertionError, match="host sync"), no_host_reads():
            read()


@pytest.mark.parametrize("kind", CONFIGS)
@torch.no_grad()
def test_cached_decode_steps_never_read_device_values(kind):
    model = tiny(**CONFIGS[kind])
    cache = PerceiverARCache.for_model(model, batch_size=2, latent_capacity=12)
    prompt = torch.randint(0, 11, (2, 7))
    model(prompt, torch.tensor([7, 5]), num_latents=3, cache=cache)  # data enters: checked, may sync
    with no_host_reads():
        one = model(torch.tensor([[3], [4]]), cache=cache)  # one token per example
        chunk = model(torch.randint(0, 11, (2, 3)), cache=cache)  # a chunk of three
    assert one.shape == (2, 1, 11) and chunk.shape == (2, 3, 11)
    assert cache.max_num_tokens == 11 and cache.num_tokens.tolist() == [11, 9]


@pytest.mark.parametrize("layout", [False, True])
@torch.no_grad()
def test_generation_steps_never_read_device_values(layout):
    """A whole greedy step of ``generate``'s decoder (sample, append, model step), also in the decode layout."""
    model = tiny()
    decoder = CachedDecoder(model, torch.randint(0, 11, (2, 5)), torch.tensor([5, 3]), max_new_tokens=4,
                            cache_latents=12)
    logits = decoder.full_pass()
    with column_major_linears(model, enabled=layout), no_host_reads():
        for _ in range(3):
            logits = decoder.append(logits.argmax(dim=-1))
    assert logits.shape == (2, 11)


def test_values_are_still_checked_where_the_data_enters():
    model = tiny(**CONFIGS["grid"])
    with pytest.raises(ValueError, match="input_ids"):  # uncached
        model(torch.tensor([[1, 11]]))
    cache = PerceiverARCache.for_model(model, batch_size=1)
    with pytest.raises(ValueError, match="input_ids"):  # the pass that fills the cache
        model(torch.tensor([[1, -1]]), num_latents=1, cache=cache)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [[1, 11]], max_new_tokens=2)
    # Positions: the grid covers 19 tokens; a decode step past it is refused from the host counters.
    model(torch.randint(0, 11, (1, 18)), num_latents=2, cache=cache)
    with pytest.raises(ValueError, match="lengths"):  # lengths given to a decode step are still checked
        model(torch.tensor([[3]]), torch.tensor([0]), cache=cache)
    model(torch.tensor([[3]]), cache=cache)  # token 19: the last grid position
    with pytest.raises(ValueError, match="grid"):
        model(torch.tensor([[3]]), cache=cache)
    with pytest.raises(ValueError, match="grid"):
        model(torch.randint(0, 11, (1, 20)))
