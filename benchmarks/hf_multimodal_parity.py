"""Full-size parity with HF ``PerceiverForMultimodalAutoencoding`` on the released input size.

Builds transformers' multimodal autoencoder at the released sizes (19,858,855 parameters; random weights,
tanh GELU, no attention dropout), saves it with ``save_pretrained``, converts it with ``convert_hf_folder``
(faithful default) and compares both on a 1x16x224x224 video + 30,720 audio samples (50,657 input tokens)
over chunks of the colab's 128-chunk decoding (6,272 pixels + 15 audio patches + the label each), then
checks that our ``autoencode`` (encode once, decode in chunks) gives the same chunks.

    python benchmarks/hf_multimodal_parity.py --threads 1 --chunks 0 127
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 127], help="chunk indices of 128 to compare")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    from perceivers.converters.hf import convert_hf_folder

    torch.manual_seed(0)
    hf = transformers.PerceiverForMultimodalAutoencoding(transformers.PerceiverConfig(
        num_latents=784, d_latents=512, num_blocks=1, num_self_attends_per_block=8, num_self_attention_heads=8,
        num_cross_attention_heads=1, num_labels=700, hidden_act="gelu_pytorch_tanh",
        attention_probs_dropout_prob=0.0)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = convert_hf_folder(tmp)
    print(f"parameters: HF {sum(p.numel() for p in hf.parameters()):,}, ours {ours.num_parameters():,}")
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(1, 16, 224, 224, 3, generator=gen)
    audio = torch.randn(1, 30720, generator=gen) * 0.1
    label = torch.zeros(1, 700)
    hf_inputs = {"image": video.permute(0, 1, 4, 2, 3), "audio": audio[..., None], "label": label}
    ours_inputs = {"image": video, "audio": audio, "label": label}
    worst: dict[str, float] = {}
    with torch.no_grad():
        for chunk in args.chunks:
            points = {"image": torch.arange(6272 * chunk, 6272 * (chunk + 1)),
                      "audio": torch.arange(15 * chunk, 15 * (chunk + 1))}
            t0 = time.perf_counter()
            a = hf(inputs=hf_inputs, subsampled_output_points={**points, "label": None}).logits
            t1 = time.perf_counter()
            b = ours(ours_inputs, subsampled_output_points=points)
            t2 = time.perf_counter()
            diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
            scale = {k: a[k].abs().max().item() for k in a}
            for k, d in diffs.items():
                worst[k] = max(worst.get(k, 0.0), d)
            print(f"chunk {chunk}: max |HF - ours| {diffs} (max |HF| {scale}); HF {t1 - t0:.1f} s, ours {t2 - t1:.1f} s")
        t0 = time.perf_counter()
        full = ours.autoencode(ours_inputs, num_chunks=128)
        print(f"ours autoencode (128 chunks, encode once): {time.perf_counter() - t0:.1f} s; "
              f"shapes { {k: tuple(v.shape) for k, v in full.items()} }")
        for chunk in args.chunks:
            points = {"image": torch.arange(6272 * chunk, 6272 * (chunk + 1)),
                      "audio": torch.arange(15 * chunk, 15 * (chunk + 1))}
            a = hf(inputs=hf_inputs, subsampled_output_points={**points, "label": None}).logits
            img = full["image"].reshape(1, -1, 3)[:, points["image"]]
            aud = full["audio"][:, 240 * chunk: 240 * (chunk + 1)]
            print(f"chunk {chunk} of autoencode vs HF: image {(a['image'] - img).abs().max().item():.2e}, "
                  f"audio {(a['audio'] - aud).abs().max().item():.2e}, "
                  f"label {(a['label'] - full['label']).abs().max().item():.2e}")
    print(f"worst max |HF - ours| over chunks: {worst}")


if __name__ == "__main__":
    main()
