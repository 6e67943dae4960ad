"""Perceiver AR generation speed: tokens/s for new tokens after a long prompt, vs the PyTorch peers.

Same shape for every model (random weights; speed does not depend on them): byte vocabulary 259,
``--channels`` wide, ``--heads`` heads, ``--layers`` latent self-attention layers, ``--latents`` latents
over a ``--prompt-len`` prompt, greedy decoding of ``--new-tokens`` tokens, batch 1, float32.

- perceivers: ``perceivers.generation.generate`` (fixed-size KV cache). ``--cache-latents`` defaults to ``2 * latents``
  so the prompt pass uses the same ``latents`` latents as the peers (the official half-fill rule).
- krasserm perceiver-io (optional): ``CausalSequenceModel`` with its append-only KV cache, stepped as its
  Hugging Face ``prepare_inputs_for_generation`` does (latents capped at ``max_latents``, the oldest
  latent moving into the prefix). Install: ``pip install perceiver-io==0.11.0 --no-deps
  --ignore-requires-python einops fairscale`` (its metadata pins old dependencies).
- lucidrains perceiver-ar-pytorch (optional): no cache, so every token reruns the model on the whole
  window, as its ``AutoregressiveWrapper.generate``; timed on the first ``--lucidrains-tokens`` tokens
  only (its per-token cost is flat) and reported per token.

Per-token time is the gap between consecutive tokens; "start" / "end" are the means over the first and
last ``--window`` decode steps (flat = end/start near 1). The prompt pass is reported separately.

Memory traffic: at batch 1 a decode step is bound by memory reads, so the run also reports the bytes a
perceivers step must read (every linear weight and bias, plus the cached keys and values it attends
over, averaged over the generated tokens) divided by its per-token time, next to what one large
matrix-vector product reaches on this machine with the same threads (the practical read bandwidth).

Run: ``python benchmarks/ar_generation_speed.py --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def summarise(name: str, prefill_s: float, gaps: list[float], window: int) -> dict:
    k = min(window, len(gaps))
    start, end = sum(gaps[:k]) / k, sum(gaps[-k:]) / k
    return {"model": name, "prefill_s": prefill_s, "decode_tokens": len(gaps),
            "tokens_per_s": len(gaps) / sum(gaps), "ms_per_token_start": 1e3 * start,
            "ms_per_token_end": 1e3 * end, "end_over_start": end / start}


def decode_bytes_per_token(model, args) -> float:
    """Bytes one perceivers decode step reads: every parameter except the embedding tables (one row of
    those), plus the cached keys and values of the cross-attention and of every latent layer, averaged
    over the generated tokens (float32)."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if not name.startswith(("token_embedding", "position_embeddings")))
    cached_latents = args.latents + args.new_tokens / 2  # mean latents attended per step
    cached_inputs = args.prompt_len + args.new_tokens / 2
    kv = 2 * 4 * (c.num_channels * cached_inputs + c.num_latent_channels * cached_latents * c.num_self_attend_layers)
    return weights + kv


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes/s of one large float32 matrix-vector product (256 MiB of weights, streamed from memory)."""
    w, x = torch.randn(8192, 8192), torch.randn(8192)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        w @ x
        best = min(best, time.perf_counter() - t0)
    return w.numel() * w.element_size() / best


def _spec(args):
    from perceivers.bench.ar import ARSpec

    return ARSpec(prompt_len=args.prompt_len, new_tokens=args.new_tokens, latents=args.latents, layers=args.layers,
                  channels=args.channels, heads=args.heads, lucidrains_tokens=args.lucidrains_tokens,
                  window=args.window)


def _time(run, new_tokens: int, warmup: int, name: str, window: int) -> dict:
    run(warmup)
    t0, stamps = run(new_tokens)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return summarise(name, stamps[0] - t0, gaps, window)


def bench_perceivers(args, prompt: torch.Tensor) -> dict:
    from perceivers.bench.ar import run_ours

    model, run = run_ours(_spec(args), prompt, cache_latents=args.cache_latents)
    result = _time(run, args.new_tokens, 3, "perceivers", args.window)
    result["bytes_per_token"] = decode_bytes_per_token(model, args)
    return result


def bench_krasserm(args, prompt: torch.Tensor) -> dict:
    from perceivers.bench.ar import run_krasserm

    _, run = run_krasserm(_spec(args), prompt)
    return _time(run, args.new_tokens, 3, "krasserm perceiver-io 0.11 (KV cache)", args.window)


def bench_lucidrains(args, prompt: torch.Tensor) -> dict:
    from perceivers.bench.ar import run_lucidrains

    _, run = run_lucidrains(_spec(args), prompt)  # times at most --lucidrains-tokens tokens: it has no cache
    return _time(run, args.new_tokens, 2, "lucidrains perceiver-ar-pytorch 0.0.10 (no cache)", args.window)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-len", type=int, default=4096)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--latents", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--cache-latents", type=int, default=None, help="perceivers cache size S (default 2 * latents)")
    p.add_argument("--lucidrains-tokens", type=int, default=12)
    p.add_argument("--window", type=int, default=16, help="steps averaged for start/end per-token times")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", nargs="*", default=[], choices=["krasserm", "lucidrains"])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median speed-up is reported")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prompt = torch.randint(3, 259, (1, args.prompt_len))
    print(f"prompt {args.prompt_len}, {args.new_tokens} new tokens, {args.latents} latents, {args.layers} layers, "
          f"{args.channels} channels, {args.heads} heads, {args.threads} CPU thread(s), torch {torch.__version__}")
    runners = [("perceivers", bench_perceivers)]
    for name, fn in (("krasserm", bench_krasserm), ("lucidrains", bench_lucidrains)):
        if name in args.skip:
            continue
        try:
            __import__({"krasserm": "perceiver", "lucidrains": "perceiver_ar_pytorch"}[name])
            runners.append((name, fn))
        except ImportError as exc:
            print(f"skipping {name}: cannot import it ({exc}); see the module doc for the install command")
    # Rounds alternate the models so that load changes on a shared machine hit them alike; each round
    # gives a speed-up per peer, and the median over rounds is reported.
    rounds: list[list[dict]] = []
    for r in range(args.rounds):
        rounds.append([fn(args, prompt) for _, fn in runners])
        ours = rounds[-1][0]
        print(f"round {r + 1}: " + ", ".join(f"{res['model'].split()[0]} {res['tokens_per_s']:.1f} tok/s"
                                              for res in rounds[-1]))
        for res in rounds[-1]:
            res["perceivers_speedup"] = ours["tokens_per_s"] / res["tokens_per_s"]
    # perceivers: its median-speed round; each peer: the round with its median speed-up, next to our
    # tokens/s in that same round (the speed-up is the ratio of those two).
    results = [dict(sorted((rd[0] for rd in rounds), key=lambda res: res["tokens_per_s"])[len(rounds) // 2])]
    for i in range(1, len(runners)):
        order = sorted(range(len(rounds)), key=lambda r: rounds[r][i]["perceivers_speedup"])
        k = order[len(order) // 2]
        median = dict(rounds[k][i], round=k + 1, perceivers_tokens_per_s_same_round=rounds[k][0]["tokens_per_s"])
        median["speedup_per_round"] = [rd[i]["perceivers_speedup"] for rd in rounds]
        results.append(median)
    print(f"{'model':<52} {'prefill s':>9} {'tok/s':>8} {'ms/tok start':>12} {'ms/tok end':>10} {'end/start':>9} "
          f"{'ours tok/s':>10} {'ours x':>7}")
    for r in results:
        same = r.get("perceivers_tokens_per_s_same_round", r["tokens_per_s"])
        print(f"{r['model']:<52} {r['prefill_s']:>9.2f} {r['tokens_per_s']:>8.2f} {r['ms_per_token_start']:>12.1f} "
              f"{r['ms_per_token_end']:>10.1f} {r['end_over_start']:>9.2f} {same:>10.2f} {r['perceivers_speedup']:>7.1f}")
    print("(perceivers: its median round; each peer: the round with its median speed-up; ours tok/s = perceivers in "
          "that round, ours x = ours tok/s / its tok/s)")
    ours = results[0]
    bandwidth = read_bandwidth()
    effective = ours["bytes_per_token"] * ours["tokens_per_s"]
    print(f"perceivers reads {ours['bytes_per_token'] / 1e6:.0f} MB per token: {effective / 1e9:.1f} GB/s, "
          f"{100 * effective / bandwidth:.0f} % of a large matrix-vector product here ({bandwidth / 1e9:.1f} GB/s)")
    for r in results:
        r["read_bandwidth"] = bandwidth
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
