"""``perceivers bench --ar``: Perceiver AR greedy generation speed against the PyTorch peers, one process each.

    python -m perceivers.bench.ar --impl ours --size bench --threads 2

Same shape for every model (random weights; speed does not depend on them): byte vocabulary 259, ``channels`` wide,
``heads`` heads, ``layers`` latent self-attention layers, ``latents`` latents over a ``prompt_len`` prompt, batch 1,
float32 (``ours-bf16``: bfloat16), greedy decoding of ``new_tokens`` tokens (after a 3-token warm-up run). Prints one
JSON object on the last line of stdout: ``prefill_s`` (the prompt pass up to the first token), ``decode_tokens_per_s`` (tokens after the
first / the gaps between them), ``tokens_per_s`` (all new tokens / the whole run, prompt pass included),
``ms_per_token_start`` / ``_end`` (means of the first and last ``window`` gaps; ``end_over_start`` near 1 =
flat), ``params``, ``ops_per_token`` (aten operator calls of one more generated token: a run of 3 tokens less a run
of 2, counted by a dispatch mode; independent of the machine's load); or ``{"unavailable": reason}``.

- ``ours``: :func:`perceivers.generation.generate` with its fixed-size KV cache (``cache_latents = 2 * latents``,
  so the prompt pass uses ``latents`` latents like the peers).
- ``ours-bf16``: the same in bfloat16 (weights and KV cache; the issue's reduced-precision decoding).
- ``krasserm``: perceiver-io 0.11 ``CausalSequenceModel`` with its append-only KV cache, stepped as its HF
  ``prepare_inputs_for_generation`` does (0.6 has no cache: unavailable).
- ``lucidrains``: perceiver-ar-pytorch ``PerceiverAR``, no cache: every token reruns the window; timed on the
  first ``lucidrains_tokens`` tokens only (its per-token cost is flat).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from perceivers.core.validation import ConfigBase, check_int

AR_IMPLS = ("ours", "ours-bf16", "krasserm", "lucidrains")


@dataclass(frozen=True, kw_only=True)
class ARSpec(ConfigBase):
    """Sizes of the generation bench (issue 14: a 4,096-token prompt, 128 new tokens, 512 x 512 latents, 6 layers)."""

    prompt_len: int = 4096
    new_tokens: int = 128
    latents: int = 512
    layers: int = 6
    channels: int = 512
    heads: int = 8
    lucidrains_tokens: int = 12
    window: int = 16

    def __post_init__(self) -> None:
        for name in ("prompt_len", "new_tokens", "latents", "layers", "channels", "heads", "lucidrains_tokens",
                     "window"):
            check_int(name, getattr(self, name))


#: ``--size`` of the AR worker: the issue's setting, ``--quick`` and the tests'.
AR_SPECS = {"bench": ARSpec(), "quick": ARSpec(prompt_len=1024, new_tokens=32, lucidrains_tokens=4, window=8),
            "tiny": ARSpec(prompt_len=24, new_tokens=6, latents=8, layers=1, channels=64, heads=2,
                           lucidrains_tokens=3, window=2)}


class CountOps(TorchDispatchMode):
    """Counts the aten operator calls dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def ops_per_token(run: Any) -> int:
    """Operator calls of one more generated token of ``run`` (see the module docstring)."""
    counts = []
    for tokens in (2, 3):
        with CountOps() as count:
            run(tokens)
        counts.append(count.calls)
    return counts[1] - counts[0]


class Unavailable(RuntimeError):
    """The peer is not installed or lacks what the bench needs."""


def summarise(t0: float, stamps: list[float], total_tokens: int, window: int) -> dict[str, Any]:
    """Timings from the start time and the time each token was produced (``total_tokens`` were asked for)."""
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    k = max(1, min(window, len(gaps)))
    start, end = sum(gaps[:k]) / k, sum(gaps[-k:]) / k
    return {"prefill_s": stamps[0] - t0, "decode_tokens": len(gaps), "decode_tokens_per_s": len(gaps) / sum(gaps),
            "tokens_per_s": len(stamps) / (stamps[-1] - t0), "timed_tokens": len(stamps),
            "asked_tokens": total_tokens, "ms_per_token_start": 1e3 * start, "ms_per_token_end": 1e3 * end,
            "end_over_start": end / start}


def run_ours(spec: ARSpec, prompt: torch.Tensor, *, cache_latents: int | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
    """Our model of ``spec``'s shape and ``run(new_tokens) -> (t0, stamps)``, greedy generation after ``prompt``
    with a KV cache of ``cache_latents`` positions (default ``2 * latents``, see the module docstring); weights
    and cache in ``dtype``."""
    from perceivers.generation import generate
    from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig

    config = PerceiverARConfig(
        vocab_size=259, max_context_length=spec.prompt_len + spec.new_tokens, num_latents=spec.latents,
        num_channels=spec.channels, num_latent_channels=spec.channels, num_self_attend_layers=spec.layers,
        num_cross_attend_heads=spec.heads, num_self_attend_heads=spec.heads)
    model = PerceiverAR(config).eval().to(dtype)

    def run(new_tokens: int) -> tuple[float, list[float]]:
        stamps: list[float] = []
        t0 = time.perf_counter()
        generate(model, prompt, max_new_tokens=new_tokens, cache_latents=cache_latents or 2 * spec.latents,
                 streamer=lambda token: stamps.append(time.perf_counter()))
        return t0, stamps

    return model, run


def run_krasserm(spec: ARSpec, prompt: torch.Tensor) -> tuple[torch.nn.Module, Any]:
    try:
        from perceiver.model.core.config import CausalSequenceModelConfig
        from perceiver.model.core.modules import CausalSequenceModel
    except ImportError as exc:
        raise Unavailable(f"needs krasserm perceiver-io 0.11 ({exc}): pip install --no-deps "
                          "--ignore-requires-python perceiver-io==0.11.0 einops fairscale") from exc
    config = CausalSequenceModelConfig(
        vocab_size=259, max_seq_len=spec.prompt_len + spec.new_tokens, max_latents=spec.latents,
        num_channels=spec.channels, num_heads=spec.heads, num_self_attention_layers=spec.layers,
        cross_attention_dropout=0.0)
    model = CausalSequenceModel(config).eval()

    @torch.no_grad()
    def run(new_tokens: int) -> tuple[float, list[float]]:
        t0 = time.perf_counter()
        prefix = spec.prompt_len - spec.latents
        out = model(prompt, prefix_len=prefix, kv_cache=[])
        cache, stamps = out.kv_cache, []
        for step in range(new_tokens):
            token = out.logits[:, -1].argmax(-1)
            stamps.append(time.perf_counter())
            if step == new_tokens - 1:
                break
            if cache[0][0].shape[1] + 1 - prefix > spec.latents:  # keep max_latents latents (its HF wrapper's rule)
                prefix += 1
                cache = [cache[0]] + [(k[:, -(spec.latents - 1):], v[:, -(spec.latents - 1):]) for k, v in cache[1:]]
            out = model(token[:, None], prefix_len=prefix, kv_cache=cache)
            cache = out.kv_cache
        return t0, stamps

    return model, run


def run_lucidrains(spec: ARSpec, prompt: torch.Tensor) -> tuple[torch.nn.Module, Any]:
    try:
        from perceiver_ar_pytorch import PerceiverAR
    except ImportError as exc:
        raise Unavailable(f"perceiver-ar-pytorch is not installed ({exc}): pip install perceiver-ar-pytorch") from exc
    model = PerceiverAR(num_tokens=259, dim=spec.channels, depth=spec.layers,
                        max_seq_len=spec.prompt_len + spec.new_tokens,
                        cross_attn_seq_len=spec.prompt_len - spec.latents, dim_head=spec.channels // spec.heads,
                        heads=spec.heads).eval()

    @torch.no_grad()
    def run(new_tokens: int) -> tuple[float, list[float]]:
        seq, stamps = prompt, []
        t0 = time.perf_counter()
        for _ in range(min(new_tokens, spec.lucidrains_tokens)):
            token = model(seq)[:, -1].argmax(-1)  # reruns the whole window: no cache
            stamps.append(time.perf_counter())
            seq = torch.cat([seq, token[:, None]], dim=1)
        return t0, stamps

    return model, run


def run_case(impl: str, size: str) -> dict[str, Any]:
    """Build ``impl`` at ``AR_SPECS[size]``, warm up, time; the dict of the module docstring."""
    spec = AR_SPECS[size]
    result: dict[str, Any] = {"impl": impl, "size": size, **spec.to_dict(), "threads": torch.get_num_threads()}
    torch.manual_seed(0)
    prompt = torch.randint(3, 259, (1, spec.prompt_len))
    builders = {"ours": run_ours, "ours-bf16": lambda *a: run_ours(*a, dtype=torch.bfloat16),
                "krasserm": run_krasserm, "lucidrains": run_lucidrains}
    try:
        model, run = builders[impl](spec, prompt)
    except Unavailable as exc:
        return {**result, "unavailable": str(exc)}
    result["params"] = sum(p.numel() for p in model.parameters())
    run(3)  # warm-up
    t0, stamps = run(spec.new_tokens)
    return {**result, **summarise(t0, stamps, spec.new_tokens, spec.window), "ops_per_token": ops_per_token(run)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perceivers.bench.ar", description=__doc__.split("\n")[0])
    p.add_argument("--impl", required=True, choices=AR_IMPLS)
    p.add_argument("--size", choices=sorted(AR_SPECS), default="bench")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run_case(args.impl, args.size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
