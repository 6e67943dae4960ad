"""Masked-autoencoding (MAE) pretraining of HiP and the fine-tuning of a classifier on its encoder.

The official HiP release has no training code; every choice below is ours (the paper leaves them open):

- **What is masked**: per example, exactly ``round(mask_ratio * M)`` positions of every non-label
  modality, uniformly at random (global torch RNG, so the engine's seeding and resume cover it).
- **Mask ratio** 0.75 by default, as MAE for images: pixels are highly redundant, so a low ratio can be
  solved by interpolating neighbours without learning where the neighbours are.
- **A masked position's input**: the embedded value is replaced by a learned per-modality mask token
  (``HiPConfig.use_mask_token``); the position embedding is still added. Zeroing the raw value instead
  would be ambiguous wherever 0 is a real value (the digits' background is 0). Dropping positions (as
  MAE's encoder does) does not fit HiP's fixed grouping.
- **Loss**: mean squared error over masked positions only (every channel of a masked position counts
  once); visible positions are trivially copyable through their own embedding, so including them mostly
  teaches identity. ``norm_targets="example"`` standardises every example's target (mean 0, std 1 over its
  positions and channels): the analogue of MAE's per-patch normalisation when each position is a single
  pixel (a per-position norm of one grey value is undefined). Digits are already on one scale, so
  their default is the plain MSE of the [0, 1] pixels.
- **Fine-tuning**: :class:`HiPFinetuneTask` trains the pooled classifier of
  :mod:`perceivers.models.hip.classifier`, with its position tables copied from an MAE run (``"mae"``),
  freshly initialised (``"random"``) or fixed 2-D Fourier features (``"fourier"``), frozen or trainable;
  cross-entropy with ``label_smoothing``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from perceivers.core.errors import ConfigError
from perceivers.core.validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_optional_int,
    check_prob,
    fail,
)
from perceivers.data.digits import load_digits_split, random_shift
from perceivers.data.images import (
    images_to_tokens,
    natural_crops,
    tokens_to_images,
    write_png,
)
from perceivers.layers.position import fourier_features, grid_positions
from perceivers.models import create_model, from_pretrained
from perceivers.models.hip import HiP, HiPClassifierConfig, HiPConfig
from perceivers.training.losses import classification_loss, evaluate_classifier
from perceivers.training.task import Task, model_config

NORM_TARGETS = ("none", "example")
DATA_SOURCES = ("digits", "natural")
POSITION_INITS = ("mae", "random", "fourier")
TRANSFERS = ("positions", "encoder")

# -------------------------------------------------------------------------------------------- pieces


def _is_mae_hip(config: Any) -> bool:
    """A HiP that :class:`HiPMAETask` can pretrain: mask tokens, one input modality, no label modality."""
    return (isinstance(config, HiPConfig) and config.use_mask_token and len(config.inputs) == 1
            and not config.label_modalities)


def _is_digits_hip_classifier(config: Any) -> bool:
    """A pooled HiP classifier that :class:`HiPFinetuneTask` can train on the digits."""
    return (isinstance(config, HiPClassifierConfig) and config.num_classes == 10
            and len(config.hip.inputs) == 1 and tuple(config.hip.modalities[config.hip.inputs[0]]) == (64, 1))


def random_mask(batch_size: int, length: int, ratio: float, *, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> Tensor:
    """``(B, M)`` bool, True = masked: exactly ``round(ratio * M)`` (at least 1, at most ``M - 1``) random
    positions per example. Draws from ``generator`` (default: the global RNG)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask_ratio={ratio!r} is invalid: expected a float in (0, 1)")
    k = min(max(round(ratio * length), 1), length - 1)
    noise = torch.rand(batch_size, length, generator=generator, device=generator.device if generator else device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, M): rank of each position's noise
    return (ranks < k).to(device)


def normalise_targets(x: Tensor, mode: str, eps: float = 1e-6) -> Tensor:
    """``x: (B, M, C)`` -> targets: unchanged (``"none"``) or standardised per example (``"example"``)."""
    if mode == "none":
        return x
    if mode == "example":
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = x.var(dim=(1, 2), keepdim=True, unbiased=False)
        return (x - mean) / (var + eps).sqrt()
    raise ValueError(f"norm_targets={mode!r} is invalid: expected one of {NORM_TARGETS}")


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked positions: ``pred, target: (B, M, C)``, ``mask: (B, M)``."""
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask {tuple(mask.shape)} "
                         "must be (B, M, C), (B, M, C) and (B, M)")
    weight = mask.to(pred.dtype)[..., None]  # (B, M, 1)
    return ((pred - target).square() * weight).sum() / (weight.sum() * pred.shape[-1]).clamp_min(1.0)


def square_side(index_dim: int) -> int:
    """Side of a square image with ``index_dim`` pixels (HiP modalities are flat)."""
    side = math.isqrt(index_dim)
    if side * side != index_dim:
        raise ValueError(f"the image modality has {index_dim} positions, not a square image")
    return side


def fourier_position_table(side: int, channels: int, num_bands: int | None = None) -> Tensor:
    """2-D Fourier features of a ``side x side`` grid (official channel order, ``max_resolution = side``),
    zero-padded to ``channels``: ``(side*side, channels)``. ``num_bands=None`` uses the most that fit."""
    if num_bands is None:
        num_bands = (channels // 2 - 1) // 2
    width = 2 * (2 * num_bands + 1)
    if num_bands < 1 or width > channels:
        fail("fourier_bands", num_bands, f"an int in [1, {(channels // 2 - 1) // 2}]: {num_bands} bands need "
                                         f"2 * (2 * bands + 1) = {width} channels, the position table has {channels}")
    feats = fourier_features(grid_positions((side, side)), num_bands=num_bands, max_resolution=(side, side))
    return F.pad(feats, (0, channels - width))


def reconstruction_grid(images: Tensor, mask: Tensor, recon: Tensor, *, scale: int = 4) -> np.ndarray:
    """One row per example, three panels: masked input (masked pixels blue), reconstruction (visible
    pixels + predictions at masked ones), original. ``images, recon: (N, C, H, W)`` in [0, 1] (C = 1 or 3),
    ``mask: (N, H, W)`` -> ``(N*(H*scale+2), 3*(W*scale+2), 3)`` uint8."""
    rgb = lambda t: t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t
    images, recon = rgb(images.float()), rgb(recon.float().clamp(0, 1))
    m = mask[:, None].expand_as(images)
    blue = torch.tensor([0.2, 0.3, 1.0]).view(1, 3, 1, 1).expand_as(images)
    panels = [torch.where(m, blue, images), torch.where(m, recon, images), images]  # each (N, 3, H, W)
    rows = []
    for i in range(images.shape[0]):
        tiles = [F.pad(p[i].repeat_interleave(scale, 1).repeat_interleave(scale, 2), (1, 1, 1, 1), value=1.0)
                 for p in panels]
        rows.append(torch.cat(tiles, dim=2))  # (3, H*scale+2, 3*(W*scale+2))
    grid = torch.cat(rows, dim=1).permute(1, 2, 0)
    return (grid * 255).round().to(torch.uint8).numpy()


@lru_cache(maxsize=4)
def _natural(size: int, num_train: int, num_test: int) -> tuple[Tensor, Tensor]:
    return natural_crops(num_train, size, seed=0), natural_crops(num_test, size, held_out=True, seed=1)


def _augment(images: Tensor, max_shift: int, flip: bool) -> Tensor:
    """Random ±``max_shift``-pixel shifts and optional horizontal flips (global RNG). ``(B, C, H, W)``."""
    if max_shift > 0:  # index tensors are built on the CPU
        images = random_shift(images.cpu(), max_shift, None).to(images.device)  # type: ignore[arg-type]
    if flip:
        flips = (torch.rand(images.shape[0]) < 0.5).to(images.device)
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    return images


# ------------------------------------------------------------------------------------------ pretraining


@dataclass(frozen=True, kw_only=True)
class HiPMAETask(Task):
    """Masked-autoencoding pretraining of a HiP with a mask token on real images.

    ``data="digits"``: scikit-learn's 8x8 digits (training split; labels unused), ``max_shift``-pixel
    shifts. ``data="natural"``: ``crop_size``² RGB crops of scikit-image's photographs (held-out photo for
    evaluation), random flips; the model's image modality is resized to the crop.
    """

    name: ClassVar[str] = "hip-mae"
    model_kind: ClassVar[str] = ("HiP with mask tokens and one image modality: (64, 1) for data='digits' or "
                                 "(S*S, 3) for data='natural'")
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered HiP with mask tokens (see `perceivers models hip-mae`)",
        "data": f"images to pretrain on: one of {DATA_SOURCES} (natural needs perceivers[images])",
        "mask_ratio": "share of each image's pixels masked, in (0, 1)",
        "norm_targets": f"reconstruction targets: one of {NORM_TARGETS} (example: standardised per image)",
        "max_shift": "digits augmentation: random shifts of up to this many pixels",
        "crop_size": "natural: side of the square crops (the model's image modality is resized to it)",
        "num_crops": "natural: training crops", "num_eval_crops": "natural: held-out crops",
        "grid_examples": "held-out examples drawn in reconstructions.png",
        "eval_seed": "seed of the held-out masks"}

    model: str = "hip-mae-digits"
    data: str = "digits"
    mask_ratio: float = 0.75
    norm_targets: str = "none"
    max_shift: int = 1
    crop_size: int = 16
    num_crops: int = 8192
    num_eval_crops: int = 512
    grid_examples: int = 8
    eval_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("data", self.data, DATA_SOURCES)
        check_choice("norm_targets", self.norm_targets, NORM_TARGETS)
        check_float("mask_ratio", self.mask_ratio, minimum=0.0, maximum=1.0, min_inclusive=False,
                    max_inclusive=False)
        check_int("max_shift", self.max_shift, minimum=0)
        for name in ("crop_size", "num_crops", "num_eval_crops", "grid_examples"):
            check_int(name, getattr(self, name))
        check_int("eval_seed", self.eval_seed, minimum=0)
        if self.data == "natural":
            check_int("crop_size", self.crop_size, minimum=2)

    def _images(self, train: bool) -> Tensor:
        if self.data == "digits":
            d = load_digits_split()
            return d.train_images if train else d.test_images
        try:
            tr, te = _natural(self.crop_size, self.num_crops, self.num_eval_crops)
        except ConfigError:  # non-finite pixels: already names the photograph and the position
            raise
        except ValueError as exc:  # its one check left: crops larger than a photograph
            raise ConfigError(f"crop_size={self.crop_size} is invalid: the crops must fit every photograph "
                              f"({exc})") from exc
        return tr if train else te

    @cached_property
    def _overrides(self) -> dict[str, Any]:
        return {"modalities": {"image": (self.crop_size ** 2, 3)}} if self.data == "natural" else {}

    @cached_property
    def _modality(self) -> str:
        """The name of the model's one image modality; ``ConfigError`` unless the model is a HiP that can learn
        from masks."""
        c = model_config("model", self.model, _is_mae_hip, "HiP with use_mask_token=True and one image modality",
                         **self._overrides)
        return c.inputs[0]

    def fits(self, config: Any) -> bool:
        if not _is_mae_hip(config):
            return False
        m, c = config.modalities[config.inputs[0]]
        return (m, c) == (64, 1) or (c == 3 and math.isqrt(m) ** 2 == m and m >= 4)

    def for_model(self, model: nn.Module) -> HiPMAETask:
        """This task on the data the loaded model reads: the digits for a (64, 1) image modality, else natural
        crops of its side."""
        super().for_model(model)  # ConfigError unless the model fits
        m, c = model.config.modalities[model.config.inputs[0]]
        if c == 1:
            return dataclasses.replace(self, data="digits")
        return dataclasses.replace(self, data="natural", crop_size=math.isqrt(m))

    def build_model(self) -> nn.Module:
        _ = self._modality  # the model fits the task
        return create_model(self.model, **self._overrides)

    def train_dataset(self, seed: int) -> Dataset:
        return TensorDataset(self._images(train=True))

    def _reconstruct(self, model: nn.Module, images: Tensor, mask: Tensor,
                     modality: str | None = None) -> tuple[Tensor, Tensor]:
        """(prediction, target), both ``(B, M, C)`` in target space; ``mask: (B, M)``; ``modality`` defaults to
        the configured model's (evaluation passes the model's own: a loaded model may name it differently)."""
        tokens = images_to_tokens(images)
        name = modality or self._modality
        out = model({name: tokens}, {name: mask})["input_reconstruction"][name]
        return out, normalise_targets(tokens, self.norm_targets)

    def training_loss(self, model: nn.Module, batch: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        (images,) = batch
        images = _augment(images, self.max_shift if self.data == "digits" else 0, flip=self.data == "natural")
        b, _, h, w = images.shape
        mask = random_mask(b, h * w, self.mask_ratio, device=images.device)
        pred, target = self._reconstruct(model, images, mask)
        loss = masked_mse(pred, target, mask)
        return loss, {"masked_mse": loss.item()}

    def _eval_masks(self, n: int, length: int) -> Tensor:
        return random_mask(n, length, self.mask_ratio, generator=torch.Generator().manual_seed(self.eval_seed))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Masked MSE on held-out images with fixed masks, and the MSE of predicting each example's mean
        visible target (a baseline that knows nothing of positions)."""
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        images = self._images(train=False)
        masks = self._eval_masks(len(images), images.shape[2] * images.shape[3])
        sse = base = count = 0.0
        for start in range(0, len(images), 128):
            x, m = images[start:start + 128].to(device), masks[start:start + 128].to(device)
            pred, target = self._reconstruct(model, x, m, model.config.inputs[0])
            w = m[..., None].float()
            visible_mean = (target * (1 - w)).sum(dim=(1, 2), keepdim=True) / ((1 - w).sum(dim=(1, 2), keepdim=True)
                                                                              * target.shape[-1])
            sse += ((pred - target).square() * w).sum().item()
            base += ((visible_mean - target).square() * w).sum().item()
            count += w.sum().item() * target.shape[-1]
        model.train(was)
        return {"test_masked_mse": sse / count, "test_mean_baseline_mse": base / count,
                "num_test_images": float(len(images))}

    @torch.no_grad()
    def on_end(self, model: nn.Module, out_dir: Path) -> None:
        """``out_dir/reconstructions.png``: held-out examples (masked input | reconstruction | original)."""
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        images = self._images(train=False)[:self.grid_examples]
        n, _, h, w = images.shape
        mask = self._eval_masks(len(self._images(train=False)), h * w)[:n]
        pred, _ = self._reconstruct(model, images.to(device), mask.to(device), model.config.inputs[0])
        pred = pred.cpu()
        if self.norm_targets == "example":  # back to pixel values with each example's statistics
            tokens = images_to_tokens(images)
            std = (tokens.var(dim=(1, 2), keepdim=True, unbiased=False) + 1e-6).sqrt()
            pred = pred * std + tokens.mean(dim=(1, 2), keepdim=True)
        grid = reconstruction_grid(images, mask.view(n, h, w), tokens_to_images(pred, h, w),
                                   scale=max(1, 64 // h))
        write_png(Path(out_dir) / "reconstructions.png", grid)
        model.train(was)

    def summary(self, result: dict[str, Any]) -> str:
        return (f"held-out masked MSE {result['test_masked_mse']:.4f} (per-example mean of the visible pixels: "
                f"{result['test_mean_baseline_mse']:.4f}), trained in {result['train_seconds']:.0f} s; "
                "reconstructions.png written next to the model")


# ------------------------------------------------------------------------------------------ fine-tuning


@dataclass(frozen=True, kw_only=True)
class HiPFinetuneTask(Task):
    """Digit classification with the pooled HiP classifier; only the position encoding differs between arms:
    ``positions="mae"`` (tables of the HiP saved in ``pretrained``), ``"random"`` (the official fan-in
    initialisation) or ``"fourier"`` (fixed 2-D Fourier features, zero-padded to ``C_emb``, always frozen).
    ``transfer="encoder"`` also copies the embedders and encoder/processor blocks of the pretrained HiP (``"mae"``
    only). The per-slot position projection is trained in every arm. Cross-entropy with ``label_smoothing``.
    """

    name: ClassVar[str] = "hip-mae-finetune"
    model_kind: ClassVar[str] = "HiP classifier of one (64, 1) image modality (8x8 grey pixels) into 10 classes"
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered pooled HiP classifier of the digits (see `perceivers models classifier`)",
        "positions": f"position tables: one of {POSITION_INITS} (mae: copied from pretrained)",
        "pretrained": "folder of a saved hip-mae model (positions=mae)",
        "transfer": f"what positions=mae copies: one of {TRANSFERS}",
        "freeze_positions": "keep the position tables fixed (fourier always is)",
        "fourier_bands": "positions=fourier: frequency bands (None: as many as fit)",
        "max_shift": "augmentation: random shifts of up to this many pixels",
        "label_smoothing": "label smoothing of the cross-entropy, in [0, 1)"}

    model: str = "hip-mae-digits-classifier"
    positions: str = "mae"
    pretrained: str | None = None
    transfer: str = "positions"
    freeze_positions: bool = True
    fourier_bands: int | None = None
    max_shift: int = 1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_choice("positions", self.positions, POSITION_INITS)
        check_choice("transfer", self.transfer, TRANSFERS)
        if self.positions == "mae" and not self.pretrained:
            raise ConfigError("positions='mae' needs pretrained=<folder of a saved hip-mae model>")
        if self.transfer == "encoder" and self.positions != "mae":
            raise ConfigError(f"transfer='encoder' needs positions='mae', got positions={self.positions!r}")
        check_bool("freeze_positions", self.freeze_positions)
        check_optional_int("fourier_bands", self.fourier_bands)
        check_int("max_shift", self.max_shift, minimum=0)
        check_prob("label_smoothing", self.label_smoothing)

    @cached_property
    def _modality(self) -> str:
        """The classifier's one modality, the digits' 64 grey pixels; ``ConfigError`` for another model."""
        c = model_config("model", self.model, _is_digits_hip_classifier, "HiP classifier of one (64, 1) image "
                         "modality (8x8 grey pixels) into 10 classes")
        return c.hip.inputs[0]

    def _pretrained_hip(self) -> HiP:
        """The HiP saved in ``pretrained``; a folder that is missing, unreadable or not a HiP is a ``ConfigError``."""
        try:  # reading the user's folder: its errors are about that folder
            hip = from_pretrained(self.pretrained)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pretrained={self.pretrained!r}: {exc}") from exc
        if not isinstance(hip, HiP):
            fail("pretrained", self.pretrained, f"the folder of a saved HiP (e.g. runs/hip-mae/model of `perceivers "
                                                f"train hip-mae`), not a {type(hip).__name__}")
        return hip

    def build_model(self) -> nn.Module:
        _ = self._modality  # the model fits the task
        model = create_model(self.model)
        c = model.config.hip
        if self.positions == "mae":
            hip = self._pretrained_hip()
            prefixes = ("position_tables.",) if self.transfer == "positions" else ("position_tables.", "embedders.",
                                                                                 "blocks.")
            try:  # raises ValueError when the two HiPs share no such tensor, or their shapes differ
                model.load_hip_weights(hip, prefixes)
            except ValueError as exc:
                raise ConfigError(f"pretrained={self.pretrained!r} does not fit model={self.model!r}: {exc}") from exc
        elif self.positions == "fourier":
            with torch.no_grad():
                for name, table in model.position_tables.items():
                    side = square_side(c.modalities[name][0])
                    table.copy_(fourier_position_table(side, table.shape[1], self.fourier_bands))
        if self.freeze_positions or self.positions == "fourier":
            for table in model.position_tables.values():
                table.requires_grad_(False)
        return model

    def train_dataset(self, seed: int) -> Dataset:
        d = load_digits_split()
        return TensorDataset(d.train_images, d.train_labels)

    def fits(self, config: Any) -> bool:
        return _is_digits_hip_classifier(config)

    def _inputs(self, images: Tensor, modality: str | None = None) -> dict[str, Tensor]:
        return {modality or self._modality: images_to_tokens(images)}

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        images, labels = batch
        images = _augment(images, self.max_shift, flip=False)
        logits = model(self._inputs(images))
        loss = classification_loss(logits, labels, self.label_smoothing)
        return loss, {"train_accuracy": (logits.argmax(-1) == labels).float().mean().item()}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        d = load_digits_split()
        modality = model.config.hip.inputs[0]  # the evaluated model's own name for it
        result = evaluate_classifier(model, d.test_images, d.test_labels, device=next(model.parameters()).device,
                                     inputs=lambda images: self._inputs(images, modality))
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
                "num_test": float(result["num_examples"])}

    def summary(self, result: dict[str, Any]) -> str:
        n, acc = int(result["num_test"]), result["test_accuracy"]
        return f"test accuracy: {acc:.4f} ({round(acc * n)}/{n}), trained in {result['train_seconds']:.0f} s"
