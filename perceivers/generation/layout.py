"""Weight layout for one-token decoding on CPU, applied to a model from outside while it decodes.

A decode step multiplies a single row by every weight matrix, so it is bound by how fast the weights
stream from memory. For an expanding ``(1, K) @ (N, K)^T`` with ``N > K`` (the first MLP layer,
``N = 4K``) and row-major weights (what ``nn.Linear`` stores), PyTorch's CPU BLAS kernels reach
about half the memory bandwidth; with the same weights laid out column-major (``weight.t()``
contiguous) they reach the bandwidth floor, ~1.7x faster on the 2-core AMD EPYC (AVX2) machine this
was measured on. Square and contracting weights are as fast or faster row-major and stay as they
are, except the query/key/value projections of each attention layer: :func:`column_major_linears`
swaps every :class:`~perceivers.layers.attention.Attention` for a :class:`FusedQKVAttention` that
computes them with one expanding column-major block. Batched matmuls (training, prompt passes)
prefer the row-major layout, so the column-major one is applied only for the decode loop and always
undone afterwards.

Only float32 weights are laid out column-major: PyTorch's CPU bf16 matrix-vector product is fast only
row-major (on the Intel Xeon AVX-512 machine of the issue-14 runs, a 256 MiB-of-weights bf16 GEMV took
16.7 ms row-major and 37 ms column-major, fp32 20.9 and 20.6 ms). Other dtypes keep their layout; their
query/key/value projections are still fused, into a row-major block.

The change is a relayout of the same values: shapes, parameters and ``state_dict`` keys stay the
same (the swapped-in attention holds the original projection modules under the original names);
results differ only by float summation order (~1e-7 relative).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceivers.layers.attention import Attention


class FusedQKVAttention(Attention):
    """An :class:`Attention` sharing another's modules, whose key and value weights (and the query weight when
    it reads the same width) live in one column-major ``(C_q + C_k + C_v, C_in)`` block.

    Without autograd, keys and values come from one matmul over that block, and queries too when the
    queries and keys read the same tensor (self-attention); with autograd it runs as a plain
    :class:`Attention` (the projection weights are views into the block, so gradients reach them).
    Build it with :meth:`from_attention`; :meth:`release` gives the projections back separate contiguous
    weights.
    """

    block: Tensor  # (sum(sizes), C_in), column-major
    bias: Tensor  # (sum(sizes),)
    sizes: list[int]
    with_query: bool

    @classmethod
    def from_attention(cls, attention: Attention, *, column_major: bool = True) -> FusedQKVAttention:
        """``column_major=False``: a row-major block (fused rows only; what bf16 weights need, see the module doc)."""
        q, k, v, o = attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj
        with torch.device("meta"):  # the modules below are replaced by the originals
            fused = cls(q_in_channels=q.in_features, kv_in_channels=k.in_features, qk_channels=q.out_features,
                        v_channels=v.out_features, output_channels=o.out_features, num_heads=attention.num_heads,
                        dropout_prob=attention.dropout_prob)
        fused.q_proj, fused.k_proj, fused.v_proj, fused.o_proj = q, k, v, o
        fused.train(attention.training)
        projs = [k, v] if q.in_features != k.in_features else [q, k, v]
        fused.with_query = len(projs) == 3
        fused.sizes = [p.out_features for p in projs]
        w = k.weight
        if column_major:
            fused.block = torch.empty(w.shape[1], sum(fused.sizes), dtype=w.dtype, device=w.device).t()
        else:
            fused.block = torch.empty(sum(fused.sizes), w.shape[1], dtype=w.dtype, device=w.device)
        with torch.no_grad():
            for proj, rows in zip(projs, fused.block.split(fused.sizes)):
                rows.copy_(proj.weight)
                proj.weight.data = rows
            fused.bias = torch.cat([p.bias for p in projs])
        return fused

    def release(self) -> None:
        """Give the projections separate contiguous weights again (same values)."""
        with torch.no_grad():
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                proj.weight.data = proj.weight.data.clone(memory_format=torch.contiguous_format)  # own storage

    def forward(self, x_q: Tensor, x_kv: Tensor, mask: Tensor | None = None, **hooks) -> Tensor:
        """As :meth:`Attention.forward`."""
        if torch.is_grad_enabled():
            return super().forward(x_q, x_kv, mask, **hooks)
        if not self.with_query:
            q = self.q_proj(x_q)
            k, v = F.linear(x_kv, self.block, self.bias).split(self.sizes, dim=-1)
        elif x_q is x_kv:
            q, k, v = F.linear(x_kv, self.block, self.bias).split(self.sizes, dim=-1)
        else:  # another query input: the key/value rows of the block only
            nq = self.sizes[0]
            q = self.q_proj(x_q)
            k, v = F.linear(x_kv, self.block[nq:], self.bias[nq:]).split(self.sizes[1:], dim=-1)
        return self.attend(q, k, v, mask, **hooks)


def _relayout(module: nn.Linear, column_major: bool) -> None:
    w = module.weight
    if column_major:
        w.data = w.data.t().contiguous().t()  # same (N, K) shape, strides (1, N)
    else:
        w.data = w.data.contiguous()


def _on_cpu(module: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in module.parameters())


def _float32(module: nn.Module) -> bool:
    return all(p.dtype == torch.float32 for p in module.parameters())


@contextmanager
def column_major_linears(model: nn.Module, *, enabled: bool = True) -> Iterator[None]:
    """Within the block, every CPU :class:`Attention` of ``model`` is replaced by a :class:`FusedQKVAttention`
    (see the module doc) and every other expanding (``out_features > in_features``) CPU ``nn.Linear`` weight
    is stored column-major (float32 weights only: the fused block of other dtypes is row-major, their other
    linears stay as they are).

    Restores the original modules and separate row-major (contiguous) weights on exit, also when the block
    raises. A no-op when ``enabled`` is false or for modules on other devices (CUDA GEMV is indifferent to
    the layout).
    """
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if enabled and type(child) is Attention and _on_cpu(child)]
    fused = {id(m) for _, _, a in swaps for m in (a.q_proj, a.k_proj, a.v_proj)}
    linears = [m for m in model.modules()
               if enabled and isinstance(m, nn.Linear) and id(m) not in fused and _on_cpu(m) and _float32(m)
               and m.weight.is_contiguous() and m.out_features > m.in_features]
    done: list[tuple[nn.Module, str, Attention, FusedQKVAttention]] = []
    try:
        with torch.no_grad():
            for parent, name, attention in swaps:
                fused_attention = FusedQKVAttention.from_attention(attention, column_major=_float32(attention))
                done.append((parent, name, attention, fused_attention))
                setattr(parent, name, done[-1][3])
            for m in linears:
                _relayout(m, column_major=True)
        yield
    finally:
        with torch.no_grad():
            for parent, name, attention, replacement in done:
                setattr(parent, name, attention)
                replacement.release()
            for m in linears:
                _relayout(m, column_major=False)
