"""Weight layout for one-token decoding on CPU.

A decode step multiplies a single row by every weight matrix, so it is bound by how fast the weights
stream from memory. For an expanding ``(1, K) @ (N, K)^T`` with ``N > K`` (the first MLP layer,
``N = 4K``) and row-major weights (what ``nn.Linear`` stores), PyTorch's CPU BLAS kernels reach
about half the memory bandwidth; with the same weights laid out column-major (``weight.t()``
contiguous) they reach the bandwidth floor, ~1.7x faster on the 2-core AMD EPYC (AVX2) machine this
was measured on. Square and contracting weights are as fast or faster row-major and stay as they
are, except the query/key/value projections of each attention layer, which are fused into one
expanding column-major block (:meth:`perceivers.layers.attention.Attention.fuse_projections`).
Batched matmuls (training, prompt passes) prefer the row-major layout, so the column-major one is
applied only for the decode loop and always undone afterwards.

The change is a relayout of the same values: shapes, parameters and ``state_dict`` keys stay the
same; results differ only by float summation order (~1e-7 relative).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from perceivers.layers.attention import Attention


def _relayout(module: nn.Linear, column_major: bool) -> None:
    w = module.weight
    if column_major:
        w.data = w.data.t().contiguous().t()  # same (N, K) shape, strides (1, N)
    else:
        w.data = w.data.contiguous()


@contextmanager
def column_major_linears(model: nn.Module, *, enabled: bool = True) -> Iterator[None]:
    """Within the block, the attention projections of ``model`` are fused (see the module doc) and
    every other expanding (``out_features > in_features``) CPU ``nn.Linear`` weight is stored
    column-major.

    Restores separate row-major (contiguous) weights on exit, also when the block raises. A no-op
    when ``enabled`` is false or for modules on other devices (CUDA GEMV is indifferent to the layout).
    """
    def on_cpu(m: nn.Module) -> bool:
        return all(p.device.type == "cpu" for p in m.parameters(recurse=False))

    attentions = [m for m in model.modules() if enabled and isinstance(m, Attention) and on_cpu(m.k_proj)]
    fused = {id(p) for a in attentions for p in (a.q_proj, a.k_proj, a.v_proj)}
    linears = [m for m in model.modules()
               if enabled and isinstance(m, nn.Linear) and id(m) not in fused and on_cpu(m)
               and m.weight.is_contiguous() and m.out_features > m.in_features]
    try:
        with torch.no_grad():
            for a in attentions:
                a.fuse_projections(True)
            for m in linears:
                _relayout(m, column_major=True)
        yield
    finally:
        with torch.no_grad():
            for a in attentions:
                a.fuse_projections(False)
            for m in linears:
                _relayout(m, column_major=False)
