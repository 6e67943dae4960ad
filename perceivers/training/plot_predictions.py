"""``perceivers plot predictions``: a trained classifier's held-out predictions, drawn.

- ``digits`` / ``mnist``: the first test images, then the first misclassified ones (red: ``label→predicted``), beside
  the confusion matrix of the whole test set;
- ``pointcloud``: test point sets with their label and prediction, and the permutation check: every test set's
  points shuffled, the largest change of a logit and the number of changed predictions; the confusion matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perceivers.core.validation import check_int, fail
from perceivers.training.figures import (
    check_output,
    pyplot,
    save_figure,
    task_for_checkpoint,
)
from perceivers.training.tasks_vision import PointCloudTask

#: The recipes whose models ``plot predictions`` draws, tried in this order when ``--recipe`` is not given.
PREDICTION_RECIPES = ("digits", "mnist", "pointcloud")
RED, GREEN = "#d62728", "#2ca02c"
MAX_COUNT = 200  # examples drawn at most


@torch.no_grad()
def predict(model: nn.Module, inputs: Tensor, batch_size: int = 100) -> Tensor:
    """Logits ``(N, K)`` of ``inputs (N, ...)`` by the model in evaluation mode, ``batch_size`` at a time."""
    device = next(model.parameters()).device
    return torch.cat([model(inputs[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(inputs), batch_size)])


def _confusion(ax: Any, labels: Tensor, predicted: Tensor, classes: int) -> None:
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    ax.imshow(matrix.numpy(), cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix.numpy()):
        if value:
            ax.text(col, row, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > matrix.max() / 2 else (RED if row != col else "black"))
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(f"confusion matrix, {len(labels)} test examples", fontsize=9)


def _panel(ax: Any, label: int, predicted: int, extra: str = "") -> None:
    wrong = label != predicted
    ax.set_title(f"{label}→{predicted}{extra}" if wrong else f"{predicted}{extra}", fontsize=8,
                 color=RED if wrong else GREEN)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(RED if wrong else "#bbbbbb")
        spine.set_linewidth(2.5 if wrong else 0.8)


def _layout(plt: Any, count: int, cols: int, cell: float = 1.25) -> tuple[Any, list[Any], Any]:
    rows = -(-count // cols)
    fig = plt.figure(figsize=(cell * cols + 5.2, max((cell + 0.1) * rows, 4.6)))
    grid = fig.add_gridspec(rows, cols + 5)
    cells = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(count)]
    return fig, cells, fig.add_subplot(grid[:, cols + 1:])


def _images(task: Any, model: nn.Module, count: int, target: Path) -> Path:
    plt, split = pyplot(), task.load_split()
    labels = split.test_labels
    predicted = predict(model, split.test_images).argmax(-1)
    errors = (predicted != labels).nonzero().flatten().tolist()
    firsts = max(count - min(len(errors), count // 3), 0)
    shown = list(range(firsts)) + [i for i in errors if i >= firsts][:count - firsts]
    fig, cells, matrix_ax = _layout(plt, len(shown), 8)
    for ax, i in zip(cells, shown):
        ax.imshow(split.test_images[i].mean(0).numpy(), cmap="gray_r", vmin=0, vmax=1)
        _panel(ax, int(labels[i]), int(predicted[i]))
    _confusion(matrix_ax, labels, predicted, int(labels.max()) + 1)
    accuracy = float((predicted == labels).float().mean())
    fig.suptitle(f"{task.name}: {accuracy:.1%} of {len(labels)} held-out test images; the first {firsts}, then "
                 f"misclassified ones (red: label→predicted)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, target)


def _point_sets(task: PointCloudTask, model: nn.Module, count: int, target: Path) -> Path:
    plt = pyplot()
    points, labels = task.test_points()  # (N, P, 2), (N,)
    logits = predict(model, task.tokens(points))
    order = torch.rand(points.shape[:2], generator=torch.Generator().manual_seed(0)).argsort(dim=1)  # (N, P)
    shuffled = points.gather(1, order[..., None].expand_as(points))
    shuffled_logits = predict(model, task.tokens(shuffled))
    predicted, shuffled_predicted = logits.argmax(-1), shuffled_logits.argmax(-1)
    change = float((logits - shuffled_logits).abs().max())
    flips = int((predicted != shuffled_predicted).sum())
    shown = range(min(count, len(labels)))
    fig, cells, matrix_ax = _layout(plt, len(shown), 4, cell=1.6)
    for ax, i in zip(cells, shown):
        ax.scatter(points[i, :, 0].numpy(), points[i, :, 1].numpy(), s=4, c="black")
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        same = "" if shuffled_predicted[i] == predicted[i] else f" (shuffled: {int(shuffled_predicted[i])})"
        _panel(ax, int(labels[i]), int(predicted[i]), same)
    _confusion(matrix_ax, labels, predicted, 10)
    accuracy = float((predicted == labels).float().mean())
    fig.suptitle(f"pointcloud: {accuracy:.1%} of {len(labels)} held-out sets of {points.shape[1]} unordered points "
                 f"(red: label→predicted)\nshuffling the points of every set changes a logit by at most {change:.1e} "
                 f"and {flips} predictions", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, target)


def plot_predictions(model: nn.Module, *, out: str | Path, recipe: str | None = None,
                     count: int | None = None) -> Path:
    """Draw ``model``'s held-out predictions on the data of ``recipe`` (default: the recipe whose task fits the
    model) into ``out``: ``count`` examples (default 48 images or 12 point sets) and the confusion matrix."""
    if count is not None:
        check_int("--count", count)
        if count > MAX_COUNT:
            fail("--count", count, f"an int in [1, {MAX_COUNT}]")
    pyplot()
    target = check_output(out)
    task = task_for_checkpoint(model, recipe, PREDICTION_RECIPES, "plot predictions")
    if isinstance(task, PointCloudTask):
        return _point_sets(task, model, count or 12, target)
    return _images(task, model, count or 48, target)
