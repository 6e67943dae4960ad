"""Recipes: a registered model, its training settings and the data it trains on.

``perceivers train NAME`` runs a recipe; its settings can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from perceivers.hub import write_json
from perceivers.registry import create_model
from perceivers.training.trainer import TrainConfig, evaluate, train_classifier


@dataclass(frozen=True, kw_only=True)
class DigitsRecipe:
    """Perceiver IO classifier on scikit-learn's 8x8 digits from raw pixels + 2-D Fourier features."""

    model: str = "perceiver-io-digits"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=80, batch_size=64, lr=1e-3,
                                                                   weight_decay=0.05, warmup_fraction=0.1))
    max_shift: int = 1  # augmentation: random translation by up to this many pixels

    def run(self, out_dir: str | Path, *, progress: bool = True, log=print) -> dict[str, Any]:
        """Train, evaluate on the fixed test split, save ``out_dir/model`` and ``out_dir/metrics.json``."""
        from perceivers.data.digits import SPLIT_SEED, TEST_SIZE, load_digits_split, random_shift

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = load_digits_split()
        torch.manual_seed(self.train.seed)
        model = create_model(self.model)
        log(f"model {self.model}: {model.num_parameters():,} parameters; "
            f"{len(data.train_images)} train / {len(data.test_images)} test digits")

        def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return random_shift(x, self.max_shift, g)

        stats = train_classifier(model, (data.train_images, data.train_labels), self.train,
                                 augment=augment if self.max_shift > 0 else None, progress=progress)
        test = evaluate(model, data.test_images, data.test_labels, device=self.train.device)
        model.to("cpu").save_pretrained(out / "model")
        metrics = {
            "recipe": "digits", "model": self.model, "num_parameters": model.num_parameters(),
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "num_test": test["num_examples"],
            "split": {"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratified": True},
            "max_shift": self.max_shift, "train": self.train.to_dict(), **stats,
        }
        write_json(out / "metrics.json", metrics)
        log(f"test accuracy: {test['accuracy']:.4f} ({round(test['accuracy'] * test['num_examples'])}/"
            f"{test['num_examples']}), trained in {stats['train_seconds']:.0f} s")
        log(f"saved model to {out / 'model'} and metrics to {out / 'metrics.json'}")
        return metrics


RECIPES: dict[str, type] = {"digits": DigitsRecipe}
