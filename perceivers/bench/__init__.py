"""``perceivers bench``: our Perceiver IO classifier against the PyTorch peers at the same configuration.

- :mod:`perceivers.bench.spec`: the benchmarked sizes (:class:`BenchSpec`) and the analytic matmul FLOP count;
- :mod:`perceivers.bench.peers`: ours, transformers, lucidrains and krasserm built at one spec;
- :mod:`perceivers.bench.worker`: one case (implementation, mode, M) in its own process, JSON on stdout;
- :mod:`perceivers.bench.runner`: matmul peaks, then every case through a worker;
- :mod:`perceivers.bench.report`: the markdown table, ``bench.json``, ``bench.md`` and ``bench.png``.

Results and how to read them: ``docs/performance.md``.
"""

from perceivers.bench.spec import BenchSpec, matmul_flops

__all__ = ["BenchSpec", "matmul_flops"]
