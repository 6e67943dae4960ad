"""The Task base class, recipes as data (a task's settings + engine settings), and losses owned by tasks
(label smoothing where a task has a classification loss, refused by name everywhere else)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from testkit.engine import QUIET, TinyTask

from perceivers.cli.main import main
from perceivers.data.images import images_to_tokens
from perceivers.training.config import EngineConfig
from perceivers.training.dist import block_modules
from perceivers.training.hip_mae import HiPFinetuneTask, HiPMAETask
from perceivers.training.loop import run_task
from perceivers.training.overrides import apply_overrides
from perceivers.training.recipes import RECIPES, Recipe
from perceivers.training.task import Task
from perceivers.training.tasks import CopyTask, DigitsTask, TextTask

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = (EngineConfig, Recipe, DigitsTask, TextTask, CopyTask, HiPMAETask, HiPFinetuneTask)
ENGINE_KEYS = ["steps", "epochs", "batch_size", "drop_last", "lr", "optimizer", "fused_optimizer", "betas", "eps",
               "schedule", "warmup_steps", "warmup_fraction", "constant_fraction", "weight_decay", "grad_clip", "grad_accum",
               "precision", "activation_checkpointing", "compile", "seed", "checkpoint_every", "keep_last",
               "log_every", "eval_every", "on_nonfinite", "max_skip_fraction", "device", "strategy",
               "find_unused_parameters", "collective_timeout"]
# What `perceivers train NAME --print-config` shows: the names it showed before recipes became data, plus
# label_smoothing (moved from the engine to the tasks whose loss uses it) and the text task's max_wavelength /
# eval_context; the HiP tasks' `name` is the task's class constant, no longer a setting.
PRINTED = {
    "digits": ["model", "max_shift", "label_smoothing"],
    "text": ["model", "context", "num_latents", "channels", "num_layers", "num_heads", "max_wavelength",
             "eval_windows", "eval_context", "data_root", "include_tests"],
    "copy": ["model", "length", "num_latents", "channels", "num_layers", "num_heads", "train_sequences",
             "eval_sequences"],
    "hip-mae": ["model", "data", "mask_ratio", "norm_targets", "max_shift", "crop_size", "num_crops",
                "num_eval_crops", "grid_examples", "eval_seed"],
    "hip-mae-finetune": ["model", "positions", "pretrained", "transfer", "freeze_positions", "fourier_bands",
                         "max_shift", "label_smoothing"],
}


def test_task_base_requires_the_four_methods_and_gives_default_hooks():
    class Partial(Task):
        def build_model(self):
            return torch.nn.Linear(2, 2)

        def train_dataset(self, seed):
            return []

        def training_loss(self, model, batch):
            return torch.zeros(()), {}

    with pytest.raises(TypeError, match="evaluate"):
        Partial()  # type: ignore[abstract]

    class Whole(Partial):
        def evaluate(self, model):
            return {}

    task, model = Whole(), TinyTask().build_model()
    assert task.blocks(model) == block_modules(model) and len(task.blocks(model)) > 0
    assert task.describe() == {} and task.summary({"test_accuracy": 1.0}) == "" and task.settings() == {}
    assert task.on_end(model, None) is None and task.aliases == {}
    assert DigitsTask(max_shift=2).settings() == {"model": "perceiver-io-digits", "max_shift": 2, "label_smoothing": 0.0}


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_training_settings_class_is_a_frozen_keyword_only_dataclass(cls):
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert all(f.kw_only for f in dataclasses.fields(cls))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_are_functions_returning_task_and_engine_settings(name, capsys):
    recipe = RECIPES[name]()
    assert isinstance(recipe, Recipe) and isinstance(recipe.task, Task) and recipe.task.name == name
    printed = PRINTED.get(name, list(recipe.task.settings()))  # a recipe added later: its task's settings
    assert list(recipe.to_dict()) == [*printed, "engine"] and list(recipe.to_dict()["engine"]) == ENGINE_KEYS
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.task.model = "other"  # type: ignore[misc]
    assert main(["train", name, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(recipe.to_dict(), default=str))


def test_recipe_checks_its_parts():
    with pytest.raises(TypeError, match="task must be"):
        Recipe(task="digits", engine=EngineConfig())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="engine must be"):
        Recipe(task=DigitsTask(), engine={"lr": 1e-3})  # type: ignore[arg-type]


def test_label_smoothing_is_the_tasks_not_the_engines():
    assert "label_smoothing" not in {f.name for f in dataclasses.fields(EngineConfig)}
    with pytest.raises(TypeError, match="label_smoothing"):
        EngineConfig(label_smoothing=0.1)  # type: ignore[call-arg]
    for name in ("text", "copy", "hip-mae"):  # no classification loss: refused by name, never silently ignored
        with pytest.raises(ValueError, match="unknown setting 'label-smoothing'"):
            apply_overrides(RECIPES[name](), [("label-smoothing", "0.1")])
    for name in ("digits", "hip-mae-finetune"):
        assert apply_overrides(RECIPES[name](), [("label-smoothing", "0.1")]).task.label_smoothing == 0.1
        with pytest.raises(ValueError, match="label_smoothing=1.0"):
            apply_overrides(RECIPES[name](), [("label-smoothing", "1")])


def _nonzero(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised parameters (output heads) drawn at random, so the logits differ between classes."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_()
    return model


def _smoothed(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Label-smoothed cross-entropy by hand: (1 - eps) NLL of the label + eps x mean NLL over the K classes."""
    logp = logits.float().log_softmax(-1)
    return ((1 - eps) * -logp.gather(1, labels[:, None])[:, 0] - eps * logp.mean(-1)).mean()


def test_digits_loss_uses_its_label_smoothing():
    task = DigitsTask(max_shift=0, label_smoothing=0.2)
    model = _nonzero(task.build_model()).eval()  # no dropout: the same logits in every call
    images, labels = task.train_dataset(0)[:8]
    loss, metrics = task.training_loss(model, (images, labels))
    logits = model(images)
    torch.testing.assert_close(loss, _smoothed(logits, labels, 0.2))
    plain, _ = dataclasses.replace(task, label_smoothing=0.0).training_loss(model, (images, labels))
    torch.testing.assert_close(plain, F.cross_entropy(logits, labels))
    assert not torch.allclose(loss, plain) and 0.0 <= metrics["accuracy"] <= 1.0


def test_hip_finetune_loss_uses_its_label_smoothing():
    task = HiPFinetuneTask(positions="random", max_shift=0, label_smoothing=0.1)
    model = _nonzero(task.build_model()).eval()  # no dropout: the same logits in every call
    images, labels = task.train_dataset(0)[:8]
    loss, _ = task.training_loss(model, (images, labels))
    logits = model({"image": images_to_tokens(images)})
    torch.testing.assert_close(loss, _smoothed(logits, labels, 0.1))
    plain, _ = dataclasses.replace(task, label_smoothing=0.0).training_loss(model, (images, labels))
    assert not torch.allclose(loss, plain)


@dataclass
class _RecordingTask(TinyTask):
    """TinyTask whose hooks record that the loop called them."""

    calls_seen: list[str] = field(default_factory=list)

    def blocks(self, model):
        self.calls_seen.append("blocks")
        return super().blocks(model)

    def describe(self):
        return {"described": True}

    def summary(self, result):
        return f"summary of {result['steps']} steps"


def test_the_loop_calls_the_task_hooks(tmp_path):
    task, lines = _RecordingTask(), []
    engine = EngineConfig(steps=3, batch_size=32, activation_checkpointing=True, log_every=1)
    result = run_task(task, engine, tmp_path, progress=False, log=lines.append)
    assert task.calls_seen == ["blocks"] and result["described"] is True
    assert json.loads((tmp_path / "metrics.json").read_text())["described"] is True
    assert lines[-2:] == ["summary of 3 steps",
                          f"saved model to {tmp_path / 'model'} and metrics to {tmp_path / 'metrics.json'}"]
    assert (tmp_path / "on_end.txt").read_text() == "done"


def test_run_task_refuses_what_is_not_a_task(tmp_path):
    with pytest.raises(TypeError, match="Task"):
        run_task(object(), EngineConfig(), tmp_path, **QUIET)  # type: ignore[arg-type]
