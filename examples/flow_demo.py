"""Optical flow on a synthetic frame pair with a known flow: a real photograph (``skimage.data.rocket``,
427 x 640, shipped with scikit-image) and the same photograph translated by ``(dx, dy)`` pixels.

    python examples/flow_demo.py                                  # released config, untrained weights
    python examples/flow_demo.py --checkpoint perceiver-io-flow/  # a converted official checkpoint
    python examples/flow_demo.py --tiled                          # the whole frame, 368 x 496 tiles

The true flow is ``(dx, dy)`` at every pixel (horizontal, vertical; content moves right/down for positive
values). The script prints the predicted mean flow and the end-point error (EPE, pixels) against it and
writes a colour-coded flow image. Without ``--checkpoint`` the weights are untrained and the official
zero-initialised flow head predicts exactly 0, so the EPE equals the shift: the demo then shows the
pipeline (uint8 images -> [-1, 1] frames -> patches -> flow in pixels, tiling), not flow quality. Convert
the official ``optical_flow_checkpoint.pystate`` (``perceivers convert haiku``) or HF's
``deepmind/optical-flow-perceiver`` (``perceivers convert hf``) to see real flow.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import data
from skimage.color import hsv2rgb
from skimage.io import imsave

from perceivers import create_model, from_pretrained
from perceivers.preprocessors.flow import frames_from_images


def shifted_pair(image: np.ndarray, dx: int, dy: int, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Two crops of ``image`` whose content moves by ``(dx, dy)`` from the first to the second."""
    m = max(abs(dx), abs(dy))
    h, w = (image.shape[0] - 2 * m, image.shape[1] - 2 * m) if size is None else size
    first = image[m:m + h, m:m + w]
    second = image[m - dy:m - dy + h, m - dx:m - dx + w]  # second[y, x] = first[y - dy, x - dx]
    return first, second


def flow_to_rgb(flow: np.ndarray) -> np.ndarray:
    """``(H, W, 2)`` flow -> uint8 RGB: hue = direction, value = magnitude (normalised to the maximum)."""
    mag = np.hypot(flow[..., 0], flow[..., 1])
    hue = (np.arctan2(flow[..., 1], flow[..., 0]) / (2 * np.pi)) % 1.0
    hsv = np.stack([hue, np.ones_like(hue), mag / max(mag.max(), 1e-8)], axis=-1)
    return (hsv2rgb(hsv) * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a folder written by perceivers (e.g. a converted official checkpoint)")
    parser.add_argument("--model", default="perceiver-io-flow", help="registered model when no checkpoint is given")
    parser.add_argument("--shift", type=int, nargs=2, default=(4, -3), metavar=("DX", "DY"))
    parser.add_argument("--tiled", action="store_true", help="whole frame with overlapping tiles (forward_tiled)")
    parser.add_argument("--min-overlap", type=int, default=20, help="tile overlap of --tiled (official 20)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="flow.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = from_pretrained(args.checkpoint) if args.checkpoint else create_model(args.model).eval()
    tile = model.config.preprocessor.image_size
    dx, dy = args.shift
    first, second = shifted_pair(data.rocket(), dx, dy, None if args.tiled else tile)
    frames = frames_from_images(first, second)  # (1, 2, 3, H, W) in [-1, 1]
    start = time.perf_counter()
    with torch.inference_mode():
        flow = model.forward_tiled(frames, min_overlap=args.min_overlap) if args.tiled else model(frames)
    flow = flow[0].numpy()  # (H, W, 2), pixels
    epe = np.hypot(flow[..., 0] - dx, flow[..., 1] - dy).mean()
    print(f"frames {first.shape[0]}x{first.shape[1]}, true flow ({dx}, {dy}) px, predicted mean "
          f"({flow[..., 0].mean():.3f}, {flow[..., 1].mean():.3f}) px, EPE {epe:.3f} px, "
          f"{time.perf_counter() - start:.1f} s")
    if not args.checkpoint:
        print("untrained weights: the official zero-initialised flow head predicts 0 (EPE = |shift|)")
    imsave(args.out, flow_to_rgb(flow), check_contrast=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
