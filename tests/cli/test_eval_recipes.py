"""``perceivers eval RECIPE``: every recipe that trains a model re-evaluates its saved model through the task's own
evaluation, printing the metrics of the training run's metrics.json; a checkpoint of another kind is one line that
names its kind and what the recipe needs."""

from __future__ import annotations

import pytest
import torch

from perceivers.cli.main import main
from perceivers.training.overrides import apply_overrides
from perceivers.training.recipes import RECIPES

# Tiny models of each recipe (task settings, given to eval too where they shape the evaluation). The digits are
# covered by tests/cli/test_cli.py (a real run, then eval) and hip-mae by the natural-crops test below (its digits
# model takes seconds per evaluation).
TINY = {
    "text": (["--context", "32", "--latents", "8", "--channels", "16", "--layers", "1", "--heads", "2"],
             ["--eval-windows", "4"]),
    "copy": (["--length", "8", "--latents", "4", "--channels", "16", "--layers", "1", "--heads", "2"],
             ["--eval-sequences", "16"]),
    "hip-mae-finetune": (["--positions", "random"], []),
}


def _pairs(args: list[str]) -> list[tuple[str, str]]:
    return [(args[i][2:], args[i + 1]) for i in range(0, len(args), 2)]


def test_the_built_in_recipes_are_covered():
    assert {*TINY, "digits", "hip-mae"} == {"digits", "text", "copy", "hip-mae", "hip-mae-finetune"}
    assert set(TINY) <= set(RECIPES)


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_eval_reports_the_tasks_own_metrics(recipe, tmp_path, capsys):
    """The saved model evaluates through the CLI to the metrics the task's ``evaluate`` (what a training run writes
    to metrics.json) gives in memory; ``tests/cli/test_cli.py`` does the same after a real digits run."""
    build_args, eval_args = TINY[recipe]
    task = apply_overrides(RECIPES[recipe](), _pairs(build_args + eval_args)).task
    torch.manual_seed(0)
    model = task.build_model()
    folder = model.save_pretrained(tmp_path / "model")
    expected = task.evaluate(model.eval())
    assert main(["eval", recipe, "--checkpoint", str(folder), *eval_args]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(printed) == set(expected)
    for key, value in printed.items():
        assert float(value) == pytest.approx(expected[key], rel=1e-5, abs=1e-9), key


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from perceivers.models import create_model

    root = tmp_path_factory.mktemp("kinds")
    return {name: create_model(name).save_pretrained(root / name)
            for name in ("perceiver-ar-debug", "perceiver-io-language-debug", "hip-debug", "perceiver-io-flow-debug",
                         "perceiver-io-digits")}


WRONG_KINDS = [
    ("digits", "perceiver-ar-debug", ("this checkpoint is a Perceiver AR (259 token ids, context 32, 8 latents); "
                                      "eval digits needs a Perceiver IO classifier of 1x8x8 images into 10 classes")),
    ("digits", "perceiver-io-language-debug", "this checkpoint is a Perceiver IO masked language model; eval digits"),
    ("digits", "hip-debug", "this checkpoint is a HiP (modalities"),
    ("digits", "perceiver-io-flow-debug", "this checkpoint is a Perceiver IO optical-flow model; eval digits"),
    ("text", "perceiver-io-digits", ("this checkpoint is a Perceiver IO image classifier (1x8x8 images, 10 classes); "
                                     "eval text needs a byte-level Perceiver AR")),
    ("copy", "perceiver-ar-debug", "eval copy needs a Perceiver AR of 259 token ids with an odd context"),
    ("hip-mae", "hip-debug", "eval hip-mae needs a HiP with mask tokens and one image modality"),
    ("hip-mae-finetune", "perceiver-io-digits", "eval hip-mae-finetune needs a HiP classifier"),
]


@pytest.mark.parametrize("recipe, name, message", WRONG_KINDS, ids=[f"{r}-{n}" for r, n, _ in WRONG_KINDS])
def test_eval_names_the_checkpoints_kind(recipe, name, message, folders, capsys):
    assert main(["eval", recipe, "--checkpoint", str(folders[name])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perceivers eval: error: --checkpoint ") and err.count("\n") == 1, err
    assert message in err


def test_eval_takes_task_settings_only(folders, capsys):
    assert main(["eval", "digits", "--checkpoint", str(folders["perceiver-io-digits"]), "--lr", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval takes the task's settings only" in err
    assert main(["eval", "digits", "--checkpoint", str(folders["perceiver-io-digits"]), "--no-such", "1"]) == 2
    assert "unknown setting 'no-such'" in capsys.readouterr().err


def test_eval_hip_mae_reads_natural_crops_for_an_rgb_model(tmp_path, capsys):
    """A hip-mae model of (S*S, 3) pixels is evaluated on natural crops of side S (``for_model``)."""
    task = apply_overrides(RECIPES["hip-mae"](), [("data", "natural"), ("crop_size", "4"), ("num_crops", "2"),
                                                  ("num_eval_crops", "6")]).task
    torch.manual_seed(0)
    model = task.build_model()
    expected = task.evaluate(model.eval())
    folder = model.save_pretrained(tmp_path / "model")
    assert main(["eval", "hip-mae", "--checkpoint", str(folder), "--num-crops", "2", "--num-eval-crops", "6"]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert float(printed["num_test_images"]) == 6
    assert float(printed["test_masked_mse"]) == pytest.approx(expected["test_masked_mse"], rel=1e-5)


def test_a_task_without_its_own_check_refuses_another_family(folders):
    """``Task.fits`` by default compares the config class with the registered ``model`` setting's."""
    from dataclasses import dataclass

    from perceivers.core.errors import ConfigError
    from perceivers.models import from_pretrained
    from perceivers.training.task import Task

    @dataclass(frozen=True, kw_only=True)
    class Plain(Task):
        name = "plain"
        model: str = "perceiver-io-digits"

        def build_model(self): ...
        def train_dataset(self, seed): ...
        def training_loss(self, model, batch): ...
        def evaluate(self, model): ...

    io, ar = (from_pretrained(folders[n]) for n in ("perceiver-io-language-debug", "perceiver-ar-debug"))
    assert Plain().for_model(io) == Plain()
    with pytest.raises(ConfigError, match=r"^this checkpoint is a Perceiver AR .*; eval plain needs a model like the "
                                          r"registered 'perceiver-io-digits'$"):
        Plain().for_model(ar)
