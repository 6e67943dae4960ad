"""`perceivers train speech`: the recipe, its settings, the confusion matrix, and a tiny end-to-end run (train,
metrics.json with the held-out-voice accuracy and baseline, confusion.json / .png, exact resume, `perceivers eval
speech`)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError
from perceivers.training import EngineConfig, run_task
from perceivers.training.recipes import RECIPES
from perceivers.training.tasks_speech import SpeechTask, confusion_matrix

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a, **k: None}
TINY = {"accents": ("en-us",), "train_variants": ("m1",), "test_variants": ("f2",), "renditions": 1}


def test_confusion_matrix_counts():
    predictions, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    assert confusion_matrix(predictions, labels, 3).tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    assert confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2).tolist() == [
        [0, 0], [0, 0]]


def test_recipe_and_settings():
    recipe = RECIPES["speech"]()
    assert isinstance(recipe.task, SpeechTask) and recipe.task.model == "perceiver-io-speech"
    assert recipe.task.data_settings().num_samples == 16_000
    assert not set(recipe.task.train_variants) & set(recipe.task.test_variants)
    with pytest.raises(ConfigError, match=r"snr_max=1.0 is invalid: expected a float >= snr_min = 5.0"):
        SpeechTask(snr_max=1.0)
    with pytest.raises(ConfigError, match=r"test_variants=\('m1',\) is invalid"):
        SpeechTask(test_variants=("m1",))
    with pytest.raises(ConfigError, match=r"model='perceiver-io-mnist' is invalid.*perceiver-io-speech"):
        SpeechTask(model="perceiver-io-mnist").build_model()


def test_tiny_run_writes_accuracy_confusion_and_evals(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "cache"))
    task = SpeechTask(**TINY)
    engine = EngineConfig(steps=4, epochs=None, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=1, eval_every=0)
    result = run_task(task, engine, tmp_path / "run", **QUIET)
    final = load_file(tmp_path / "run" / "model" / "model.safetensors")
    # resuming from step 2 replays steps 3-4 (offsets, gains, noise, dropout from the checkpointed RNG) bit for bit
    run_task(task, engine, tmp_path / "run", resume=tmp_path / "run" / "checkpoints" / "step-00000002", **QUIET)
    again = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    assert result["recipe"] == "speech" and result["num_test"] == 20 and result["num_samples"] == 16_000
    assert 0 <= result["test_accuracy"] <= 1 and result["test_accuracy_f2"] == result["test_accuracy"]
    assert result["majority_baseline"] == result["chance"] == 0.05
    assert result["data"]["train_words"] == 20 and result["data"]["source"].startswith("synthetic")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_accuracy"] == result["test_accuracy"]
    confusion = json.loads((tmp_path / "run" / "confusion.json").read_text())
    counts = torch.tensor(confusion["counts"])
    assert counts.shape == (20, 20) and counts.sum(1).tolist() == [1] * 20  # one test clip of each word
    assert float(counts.diag().sum()) / 20 == pytest.approx(result["test_accuracy"])
    assert (tmp_path / "run" / "confusion.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main(["eval", "speech", "--checkpoint", str(tmp_path / "run" / "model"), "--accents", "en-us",
                 "--train-variants", "m1", "--test-variants", "f2", "--renditions", "1"]) == 0
    assert f"test_accuracy: {result['test_accuracy']}" in capsys.readouterr().out


def test_missing_espeakng_loader_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import espeakng_loader -> ImportError
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "empty-cache"))
    assert main(["train", "speech", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
                 "--renditions", "1", "--accents", "en-us", "--train-variants", "m2", "--test-variants", "f1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("perceivers train: error: ") and "perceivers[speech]" in err[0]
