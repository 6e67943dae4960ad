"""The released-size optical-flow model (41,057,134 parameters) at 368 x 496 on CPU: HF parity, and the
memory of chunked vs unchunked decoding of the 182,528 queries.

    python benchmarks/flow_full_size.py memory --phase decoder   # decoder alone, chunk sizes side by side
    python benchmarks/flow_full_size.py memory --phase forward   # whole forward, chunked vs unchunked
    python benchmarks/flow_full_size.py time                     # decoder time, chunk sizes alternated
    python benchmarks/flow_full_size.py parity                   # vs transformers' PerceiverForOpticalFlow

``memory`` runs each setting in a fresh subprocess and reports the peak RSS growth during that one call
(Linux ``VmHWM``, reset to the current RSS just before the call), and its wall time. ``--phase decoder``
first encodes once in its own process and saves the latents and queries, so the measured process only
decodes. ``time`` decodes the same latents with each chunk size in turn, in one process, ``--repeats``
times, and reports median times as ratios. ``parity`` builds transformers' model with random weights (LayerNorm scales ~1, other tensors
N(0, 0.1^2) so attention is query-dependent), converts it with ``convert_hf_folder`` (official semantics)
and compares ``HF x 20`` with our pixels on the same random frames. Random weights: no trained checkpoint
is available here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZE = (368, 496)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def _reset_peak() -> float:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux ``clear_refs`` 5); returns that RSS."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mib("VmRSS")


def _model():
    from perceivers import create_model

    torch.manual_seed(0)
    model = create_model("perceiver-io-flow").eval()
    with torch.no_grad():  # the released head is zero-initialised: give it weights so the flow is non-trivial
        model.decoder.output.weight.normal_(0, 0.05)
    return model


def _frames() -> torch.Tensor:
    return torch.rand(1, 2, 3, *SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    model = _model()
    chunk = None if args.chunk_size == 0 else args.chunk_size
    model.decoder.config = model.decoder.config.replace(chunk_size=chunk)  # None: all queries at once
    with torch.inference_mode():
        if args.phase == "decoder":
            saved = torch.load(args.saved, weights_only=True)
            z, tokens = saved["z"], saved["tokens"]
            base = _reset_peak()
            start = time.perf_counter()
            out = model.decoder(z, tokens)
        else:
            frames = _frames()
            base = _reset_peak()
            start = time.perf_counter()
            out = model(frames)
        seconds = time.perf_counter() - start
    print(json.dumps({"phase": args.phase, "chunk_size": chunk, "peak_growth_mib": round(_status_mib("VmHWM") - base, 1),
                      "seconds": round(seconds, 1), "checksum": float(out.double().abs().sum())}))


def memory(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    sizes = [0, *args.chunk_sizes]  # 0 = unchunked
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "encoded.pt"
        if args.phase == "decoder":
            model = _model()
            with torch.inference_mode():
                z, tokens = model.forward_features(_frames())
            torch.save({"z": z.clone(), "tokens": tokens.clone()}, saved)
            del model, z, tokens
        rows = []
        for size in sizes:
            cmd = [sys.executable, __file__, "child", "--phase", args.phase, "--chunk-size", str(size),
                   "--threads", str(args.threads), "--saved", str(saved)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(line))
            print(rows[-1], flush=True)
    full = rows[0]
    for row in rows[1:]:
        print(f"{args.phase}: unchunked / chunk {row['chunk_size']}: peak memory "
              f"{full['peak_growth_mib'] / row['peak_growth_mib']:.2f}x ({full['peak_growth_mib']:.0f} MiB vs "
              f"{row['peak_growth_mib']:.0f} MiB), time {full['seconds'] / row['seconds']:.2f}x "
              f"({full['seconds']:.1f} s vs {row['seconds']:.1f} s), same output: "
              f"{abs(full['checksum'] - row['checksum']) <= 1e-6 * abs(full['checksum'])}")


def timing(args: argparse.Namespace) -> None:
    import statistics

    torch.set_num_threads(args.threads)
    model = _model()
    sizes = [None, *args.chunk_sizes]
    times: dict[int | None, list[float]] = {s: [] for s in sizes}
    with torch.inference_mode():
        z, tokens = model.forward_features(_frames())
        reference = model.decoder(z, tokens, chunk_size=tokens.shape[1])
        for _ in range(args.repeats):
            for size in sizes:
                start = time.perf_counter()
                out = model.decoder(z, tokens, chunk_size=size or tokens.shape[1])
                times[size].append(time.perf_counter() - start)
                assert torch.allclose(out, reference, rtol=0, atol=1e-5)
    full = statistics.median(times[None])
    for size in args.chunk_sizes:
        t = statistics.median(times[size])
        print(f"decoder time unchunked / chunk {size}: {full / t:.2f}x ({full:.1f} s vs {t:.1f} s, median of "
              f"{args.repeats}, alternated in one process)")


def parity(args: argparse.Namespace) -> None:
    import transformers

    from perceivers.converters.hf import convert_hf_folder
    from perceivers.preprocessors.flow import extract_flow_patches

    torch.set_num_threads(args.threads)
    cfg = transformers.PerceiverConfig(num_latents=2048, d_latents=512, d_model=322, num_blocks=1,
                                       num_self_attends_per_block=24, num_self_attention_heads=16,
                                       num_cross_attention_heads=1, train_size=list(SIZE),
                                       hidden_act="gelu_pytorch_tanh", attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.PerceiverForOpticalFlow(cfg).eval()
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            unit = 1.0 if "layernorm" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + unit)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = convert_hf_folder(tmp)
    frames = _frames()
    with torch.inference_mode():
        start = time.perf_counter()
        ours_flow = ours(frames)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        hf_flow = hf(inputs=extract_flow_patches(frames)).logits * 20.0
        hf_s = time.perf_counter() - start
    diff = (hf_flow - ours_flow).abs().max().item()
    print(json.dumps({"parameters": ours.num_parameters(), "max_abs_diff_px": diff,
                      "max_abs_flow_px": ours_flow.abs().max().item(), "flow_std_px": ours_flow.std().item(),
                      "seconds_ours": round(ours_s, 1), "seconds_hf": round(hf_s, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("memory", "child", "time", "parity"):
        p = sub.add_parser(name)
        p.add_argument("--threads", type=int, default=1)
        if name in ("memory", "child"):
            p.add_argument("--phase", choices=("decoder", "forward"), default="decoder")
        if name in ("memory", "time"):
            p.add_argument("--chunk-sizes", type=int, nargs="+", default=[16384, 4096])
        if name == "time":
            p.add_argument("--repeats", type=int, default=2)
        if name == "child":
            p.add_argument("--chunk-size", type=int, required=True)
            p.add_argument("--saved", default="")
    args = parser.parse_args()
    {"memory": memory, "child": child, "time": timing, "parity": parity}[args.cmd](args)


if __name__ == "__main__":
    main()
