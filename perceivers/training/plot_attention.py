"""``perceivers plot attention``: where the latents of a trained Perceiver IO model look, drawn over its input.

For one held-out example of the model's recipe (``digits`` / ``mnist``: a test image; ``flow``: the Middlebury
motorcycle pair, or a held-out synthetic pair; ``pointcloud``: a test point set) the encoder cross-attention
(:func:`perceivers.models.attention_maps.attention_maps`, averaged over heads) is drawn for the latents the decoder
reads most (the decoder's attention over the latents, averaged over its queries and heads) and for the mean over
all latents. Each panel is scaled to its own maximum, on a square-root scale (colour and opacity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perceivers.core.validation import check_int, fail
from perceivers.data.flow_pairs import middlebury_pair
from perceivers.models.attention_maps import attention_maps
from perceivers.training.figures import (
    check_output,
    pyplot,
    save_figure,
    task_for_checkpoint,
)
from perceivers.training.task import Task
from perceivers.training.tasks import ImageClassificationTask
from perceivers.training.tasks_flow import FlowTask
from perceivers.training.tasks_vision import PointCloudTask

#: The recipes whose models ``plot attention`` draws, tried in this order when ``--recipe`` is not given.
ATTENTION_RECIPES = ("digits", "mnist", "flow", "pointcloud")


@dataclass(frozen=True)
class Example:
    """One input and how to draw it: ``background (H, W)`` grey or ``(H, W, 3)`` RGB in [0, 1] with the tokens
    on its pixel grid, or ``points (P, 2)`` (x, y) with one token per point."""

    inputs: Tensor | dict[str, Tensor]
    title: str
    background: np.ndarray | None = None
    points: np.ndarray | None = None


def _index(index: int, count: int, what: str) -> None:
    check_int("--index", index, minimum=0)
    if index >= count:
        fail("--index", index, f"an int in [0, {count}) ({what})")


@torch.no_grad()
def _predicted_class(model: nn.Module, inputs: Tensor) -> int:
    return int(model(inputs).argmax(-1)[0])


def example_for(task: Task, model: nn.Module, index: int) -> Example:
    """Held-out example ``index`` of ``task``'s data, ready for ``model`` (on the model's device)."""
    device = next(model.parameters()).device
    if isinstance(task, FlowTask):
        size = tuple(model.config.preprocessor.image_size)
        _index(index, 1 + task.eval_pairs, f"0: the Middlebury pair, 1-{task.eval_pairs}: held-out synthetic pairs")
        if index == 0:
            frames, title = middlebury_pair(size)[0], "Middlebury motorcycle, frame 1"
        else:
            frames, title = task.held_out(size)[0][index - 1], f"held-out synthetic pair {index}, frame 1"
        rgb = ((frames[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
        return Example({"frames": frames[None].to(device)}, title, background=rgb)
    if isinstance(task, PointCloudTask):
        points, labels = task.test_points()
        _index(index, len(labels), "a test point set")
        tokens = task.tokens(points[index:index + 1]).to(device)
        title = f"test set {index}: label {int(labels[index])}, predicted {_predicted_class(model, tokens)}"
        return Example(tokens, title, points=points[index].numpy())
    if isinstance(task, ImageClassificationTask):
        split = task.load_split()
        _index(index, len(split.test_labels), "a test image")
        image = split.test_images[index:index + 1].to(device)
        title = (f"test image {index}: label {int(split.test_labels[index])}, "
                 f"predicted {_predicted_class(model, image)}")
        return Example(image, title, background=split.test_images[index].mean(0).numpy())
    raise TypeError(f"no example of a {type(task).__name__}")  # task_for_checkpoint only returns the above


def latent_order(maps: dict[str, Tensor], num_latents: int) -> tuple[list[int], np.ndarray | None]:
    """Latents by decreasing decoder weight (its attention averaged over heads and queries; ``None`` and the
    latents in order without a decoder map)."""
    if "decoder" not in maps:
        return list(range(num_latents)), None
    weight = maps["decoder"][0].mean(dim=(0, 1)).numpy()  # (N,)
    return [int(i) for i in np.argsort(-weight, kind="stable")], weight


def _draw(ax: Any, example: Example, values: np.ndarray | None, title: str) -> None:
    """One panel: the example alone (``values=None``) or ``values (M,)`` (one per token) over it, scaled to their
    maximum."""
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    top = (float(values.max()) or 1.0) if values is not None else 1.0
    level = np.sqrt(values / top) if values is not None else None  # square-root scale: weak attention shows too
    if example.points is not None:
        x, y = example.points[:, 0], example.points[:, 1]
        ax.set_facecolor("#202020")
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
        if values is None:
            ax.scatter(x, y, s=10, c="white")
        else:
            ax.scatter(x, y, s=6, c="#606060")
            ax.scatter(x, y, s=4 + 60 * level, c=level, cmap="inferno", vmin=0, vmax=1, alpha=level)
        return
    h, w = example.background.shape[:2]
    ax.imshow(example.background, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
    if values is None:
        return
    scale = round((h * w / values.size) ** 0.5)
    if values.size * scale * scale != h * w:
        raise ValueError(f"{values.size} tokens do not tile the {h}x{w} input")
    grid = level.reshape(h // scale, w // scale)
    rgba = pyplot().get_cmap("inferno")(grid)  # (h, w, 4): colour and opacity both follow the attention
    rgba[..., 3] = 0.15 + 0.85 * grid
    ax.imshow(rgba, extent=(0, w, h, 0), interpolation="nearest")


def plot_attention(model: nn.Module, *, out: str | Path, recipe: str | None = None, index: int = 0,
                   latents: int = 6) -> Path:
    """Draw the encoder cross-attention of ``model`` on held-out example ``index`` of ``recipe`` (default: the
    recipe whose task fits the model) into ``out``: the input, the mean over latents, then the ``latents`` latents
    the decoder reads most. Returns the path."""
    check_int("--latents", latents)
    plt = pyplot()
    target = check_output(out)
    task = task_for_checkpoint(model, recipe, ATTENTION_RECIPES, "plot attention")
    example = example_for(task, model, index)
    maps = attention_maps(model, example.inputs)
    first = maps.get("encoder", maps.get("encoder.0"))  # the original Perceiver: its first cross-attend
    encoder = first[0].mean(0).numpy()  # (N, M): heads averaged
    order, weight = latent_order(maps, encoder.shape[0])
    shown = order[:latents]
    panels = [("mean over all latents", encoder.mean(0))]
    for n in shown:
        share = f", decoder reads {weight[n]:.0%}" if weight is not None else ""
        panels.append((f"latent {n}{share}", encoder[n]))
    cols = min(4, len(panels) + 1)
    rows = -(-(len(panels) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    _draw(axes.flat[0], example, None, "input")
    for ax, (title, values) in zip(list(axes.flat)[1:], panels):
        _draw(ax, example, values, title)
    for ax in list(axes.flat)[len(panels) + 1:]:
        ax.axis("off")
    which = "encoder cross-attention" if "encoder" in maps else "the encoder's first cross-attention"
    fig.suptitle(f"{task.name}: {example.title}; where the latents look ({which}, {encoder.shape[0]} latents)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, target)
