"""Forward speed and peak memory: perceivers vs Hugging Face transformers, same Perceiver IO weights.

Builds transformers' ``PerceiverForImageClassificationFourier`` and our equivalent model with the
same (mapped) weights, checks the logits agree, then times inference forwards of both in the same
process, alternating, and reports the ratio. Peak memory is measured per implementation in a fresh
subprocess (max RSS growth on CPU, ``max_memory_allocated`` on CUDA).

    python benchmarks/bench_vs_hf_image.py --image-size 224 --batch 2      # the released size
    python benchmarks/bench_vs_hf_image.py --image-size 96 --latents 256   # quicker
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import torch


def build(args: argparse.Namespace):
    from transformers import PerceiverConfig, PerceiverForImageClassificationFourier

    from perceivers import (
        DecoderConfig,
        EncoderConfig,
        ImagePreprocessorConfig,
        PerceiverIO,
        PerceiverIOConfig,
    )
    from perceivers.converters.hf_keys import hf_to_perceivers_state_dict

    hf_cfg = PerceiverConfig(num_latents=args.latents, d_latents=1024, num_blocks=args.blocks,
                             num_self_attends_per_block=6, num_self_attention_heads=8, num_cross_attention_heads=1,
                             image_size=args.image_size, num_labels=1000, hidden_act="gelu_pytorch_tanh",
                             attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = PerceiverForImageClassificationFourier(hf_cfg).eval()
    fourier = hf.perceiver.input_preprocessor.position_embeddings
    prep = ImagePreprocessorConfig(image_size=(args.image_size,) * 2, prep_type="pixels", spatial_downsample=1,
                                   position_encoding="fourier", num_bands=fourier.num_bands,
                                   max_resolution=tuple(fourier.max_resolution))
    enc = EncoderConfig(num_latents=args.latents, num_latent_channels=1024, num_blocks=args.blocks,
                        num_self_attends_per_block=6)
    dec = DecoderConfig(type="classification", num_outputs=1000, num_query_channels=1024, use_query_residual=True)
    ours = PerceiverIO(PerceiverIOConfig(preprocessor=prep, encoder=enc, decoder=dec)).eval()
    ours.load_state_dict(hf_to_perceivers_state_dict(hf.state_dict(), num_self_attends_per_block=6))
    return hf, ours


def run_forward(model, x, is_hf: bool) -> torch.Tensor:
    return model(pixel_values=x).logits if is_hf else model(x)


def time_both(args: argparse.Namespace) -> dict:
    hf, ours = build(args)
    device = torch.device(args.device)
    hf, ours = hf.to(device), ours.to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    with torch.inference_mode():
        diff = (run_forward(hf, x, True) - run_forward(ours, x, False)).abs().max().item()
        times = {"hf": [], "ours": []}
        for _ in range(args.repeats):
            for name, model in (("hf", hf), ("ours", ours)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run_forward(model, x, name == "hf")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"max_abs_logit_diff": diff, "median_s": med, "speedup_vs_hf": med["hf"] / med["ours"]}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(args: argparse.Namespace, which: str) -> float:
    """MiB of peak memory above the loaded model for one inference forward of ``which``.

    CUDA: ``max_memory_allocated``. CPU (Linux): the resident-set high-water mark is reset through
    ``/proc/self/clear_refs`` after building, then read back after the forward.
    """
    hf, ours = build(args)
    model = hf if which == "hf" else ours
    del hf, ours
    gc.collect()
    device = torch.device(args.device)
    model = model.to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_forward(model, x, which == "hf")
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        base = _proc_status_kib("VmRSS")
        run_forward(model, x, which == "hf")
        return (_proc_status_kib("VmHWM") - base) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--latents", type=int, default=512)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-of", choices=["hf", "ours"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_of:
        print(json.dumps({"peak_mib": peak_memory(args, args.memory_of)}))
        return
    result = time_both(args)
    argv = [a for a in sys.argv[1:]]
    for which in ("hf", "ours"):
        out = subprocess.run([sys.executable, __file__, *argv, "--memory-of", which], check=True,
                             capture_output=True, text=True).stdout
        result[f"peak_mib_{which}"] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    result["memory_ratio_hf_over_ours"] = result["peak_mib_hf"] / max(result["peak_mib_ours"], 1e-9)
    result["config"] = vars(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
