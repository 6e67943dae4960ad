"""Task of the ``flow`` recipe: the Perceiver IO optical-flow model trained on synthetic motion of real photographs
(ground truth by construction) and evaluated on the real Middlebury 2014 motorcycle stereo pair
(:mod:`perceivers.data.flow_pairs`), against zero flow and a classical method (OpenCV's Farneback when OpenCV is
installed, else block matching). Writes ``flow.png``: frames, ground truth, prediction and the classical flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from perceivers.core.validation import check_float, check_int
from perceivers.data.flow_pairs import (
    HELD_OUT_IMAGES,
    TRAIN_IMAGES,
    WarpedPairs,
    block_matching,
    end_point_error,
    farneback,
    flow_to_rgb,
    middlebury_pair,
    photographs,
)
from perceivers.data.images import write_png
from perceivers.models import create_model
from perceivers.models.perceiver_io import PerceiverIOConfig
from perceivers.preprocessors import FlowPreprocessorConfig
from perceivers.training.task import Task, model_config

#: What the flow task trains and ``perceivers eval flow`` scores.
FLOW_MODEL = "Perceiver IO optical-flow model of RGB frame pairs"
PNG_SCALE = 6  # each flow pixel drawn as a PNG_SCALE x PNG_SCALE block


def is_flow_model(config: Any) -> bool:
    """Whether ``config`` is a :data:`FLOW_MODEL` (two RGB frames in, two flow channels out)."""
    p = getattr(config, "preprocessor", None)
    return (isinstance(config, PerceiverIOConfig) and isinstance(p, FlowPreprocessorConfig) and p.num_frames == 2
            and p.in_channels == 3 and config.decoder.type == "flow" and config.decoder.num_outputs == 2)


def classical_flow(frames: Tensor) -> tuple[Tensor, str]:
    """Farneback (OpenCV) or, without OpenCV, block matching: ``(flow (H, W, 2), method name)``."""
    flow = farneback(frames)
    return (flow, "opencv farneback") if flow is not None else (block_matching(frames), "block matching (numpy)")


@dataclass(frozen=True, kw_only=True)
class FlowTask(Task):
    """Optical flow at the model's ``image_size``: training pairs are scikit-image photographs warped by smooth
    random fields of up to about ``max_shift`` pixels (``train_pairs`` deterministic pairs per epoch, drawn from
    the engine's seed); loss: mean end-point error. Evaluation: end-point error on the real Middlebury motorcycle
    pair (and on ``eval_pairs`` synthetic pairs of a held-out photograph, drawn from ``eval_seed``)."""

    name: ClassVar[str] = "flow"
    model_kind: ClassVar[str] = FLOW_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered Perceiver IO flow model (perceiver-io-flow-small, perceiver-io-flow, ...)",
        "max_shift": "training motion: translation up to this many pixels per axis, plus a smooth third of it",
        "train_pairs": "synthetic training pairs per epoch (drawn from the engine's seed)",
        "eval_pairs": "synthetic held-out pairs scored (from the held-out photograph)",
        "eval_seed": "seed of the held-out synthetic pairs"}

    model: str = "perceiver-io-flow-small"
    max_shift: float = 4.0
    train_pairs: int = 1 << 20
    eval_pairs: int = 64
    eval_seed: int = 1234

    def __post_init__(self) -> None:
        check_float("max_shift", self.max_shift, minimum=0.0, maximum=64.0)
        check_int("train_pairs", self.train_pairs)
        check_int("eval_pairs", self.eval_pairs)
        check_int("eval_seed", self.eval_seed, minimum=0)

    def fits(self, config: Any) -> bool:
        return is_flow_model(config)

    @cached_property
    def size(self) -> tuple[int, int]:
        """The model's ``(H, W)`` (the configured model; ``eval`` uses the loaded model's)."""
        return tuple(model_config("model", self.model, is_flow_model, FLOW_MODEL).preprocessor.image_size)

    def build_model(self) -> nn.Module:
        _ = self.size  # fail early on a model of another family
        return create_model(self.model)

    def train_dataset(self, seed: int) -> Dataset:
        return WarpedPairs(photographs(TRAIN_IMAGES), size=self.size, num_pairs=self.train_pairs,
                           max_shift=self.max_shift, seed=seed)

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        frames, flow = batch  # (B, 2, 3, H, W), (B, H, W, 2)
        error = (model(frames).float() - flow).norm(dim=-1)  # (B, H, W)
        return error.mean(), {}

    @torch.no_grad()
    def predict(self, model: nn.Module, frames: Tensor) -> Tensor:
        """Flow ``(N, H, W, 2)`` of ``frames (N, 2, 3, H, W)`` by the plain model, in evaluation mode."""
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        out = torch.cat([model(frames[i:i + 16].to(device)).float().cpu() for i in range(0, len(frames), 16)])
        model.train(was_training)
        return out

    def held_out(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The held-out synthetic pairs ``(E, 2, 3, H, W)`` and flows ``(E, H, W, 2)``."""
        pairs = WarpedPairs(photographs(HELD_OUT_IMAGES), size=size, num_pairs=self.eval_pairs,
                            max_shift=self.max_shift, seed=self.eval_seed)
        frames, flows = zip(*(pairs[i] for i in range(len(pairs))))
        return torch.stack(frames), torch.stack(flows)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        size = tuple(model.config.preprocessor.image_size)
        frames, flow, valid = middlebury_pair(size)
        predicted = self.predict(model, frames[None])[0]
        classical, method = classical_flow(frames)
        syn_frames, syn_flows = self.held_out(size)
        syn_predicted = self.predict(model, syn_frames)
        return {"middlebury_epe": end_point_error(predicted, flow, valid),
                "middlebury_zero_flow_epe": end_point_error(torch.zeros_like(flow), flow, valid),
                "middlebury_classical_epe": end_point_error(classical, flow, valid), "classical_method": method,
                "middlebury_valid_pixels": int(valid.sum()),
                "synthetic_epe": end_point_error(syn_predicted, syn_flows),
                "synthetic_zero_flow_epe": end_point_error(torch.zeros_like(syn_flows), syn_flows),
                "synthetic_classical_epe": float(np.mean([end_point_error(classical_flow(f)[0], g)
                                                          for f, g in zip(syn_frames, syn_flows)]))}

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """``flow.png``: for Middlebury, then one held-out synthetic pair: frame 1, ground truth, prediction,
        classical flow (colour code: hue = direction, saturation = speed; black = unknown)."""
        size = tuple(model.config.preprocessor.image_size)
        frames, flow, valid = middlebury_pair(size)
        syn_frames, syn_flows = self.held_out(size)
        rows = []
        for f, g, v in ((frames, flow, valid), (syn_frames[0], syn_flows[0], None)):
            top = float(g.norm(dim=-1).max())
            image = ((f[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            tiles = [image, flow_to_rgb(g, top, v), flow_to_rgb(self.predict(model, f[None])[0], top),
                     flow_to_rgb(classical_flow(f)[0], top)]
            gap = np.full((size[0], 2, 3), 255, np.uint8)
            rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1))
        grid = np.concatenate([rows[0], np.full((2, rows[0].shape[1], 3), 255, np.uint8), rows[1]], axis=0)
        write_png(out_dir / "flow.png", grid.repeat(PNG_SCALE, 0).repeat(PNG_SCALE, 1))

    def describe(self) -> dict[str, Any]:
        return {"recipe": "flow", "model": self.model, "image_size": list(self.size), "max_shift": self.max_shift,
                "train_pairs": self.train_pairs, "eval_pairs": self.eval_pairs, "eval_seed": self.eval_seed,
                "data": {"train": "synthetic motion (smooth random fields) on real scikit-image photographs: "
                                  + ", ".join(TRAIN_IMAGES),
                         "held_out_synthetic": ", ".join(HELD_OUT_IMAGES),
                         "real": "Middlebury 2014 motorcycle stereo pair (skimage.data.stereo_motorcycle), "
                                 "flow = -disparity, resized to the model's size"}}

    def summary(self, result: dict[str, Any]) -> str:
        return (f"Middlebury motorcycle end-point error: {result['middlebury_epe']:.3f} px (zero flow "
                f"{result['middlebury_zero_flow_epe']:.3f}, {result['classical_method']} "
                f"{result['middlebury_classical_epe']:.3f}); synthetic held-out {result['synthetic_epe']:.3f} px; "
                f"trained in {result['train_seconds']:.0f} s")
