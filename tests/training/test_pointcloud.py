"""`perceivers train pointcloud`: digits as unordered 2-D point sets (inked pixels, subsets, jitter), a prediction
that does not depend on the order of the points, and a tiny end-to-end run (train, exact resume, eval)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError
from perceivers.data.pointcloud import (
    HALF,
    inked_points,
    load_point_sets,
    point_features,
    sample_points,
    token_channels,
)
from perceivers.models import create_model
from perceivers.training import EngineConfig, run_task
from perceivers.training.recipes import RECIPES
from perceivers.training.tasks_vision import PointCloudTask

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a, **k: None}


def test_inked_points_are_pixel_centres_padded():
    images = torch.zeros(2, 1, 28, 28)
    images[0, 0, 0, 27] = 0.9  # top right
    images[0, 0, 27, 0] = 0.5  # bottom left: at the threshold counts
    images[0, 0, 5, 5] = 0.49  # below it
    images[1, 0, 14, 14] = 1.0
    coords, counts = inked_points(images, 0.5)
    assert counts.tolist() == [2, 1] and coords.shape == (2, 2, 2)
    # (x, y) in [-1, 1], x to the right, y upwards; row-major order
    expected = torch.tensor([[27.5 / 14 - 1, 1 - 0.5 / 14], [0.5 / 14 - 1, 1 - 27.5 / 14]])
    torch.testing.assert_close(coords[0], expected)
    torch.testing.assert_close(coords[1], torch.tensor([[14.5 / 14 - 1, 1 - 14.5 / 14], [0.0, 0.0]]))
    with pytest.raises(ConfigError, match=r"threshold=0\.95 is invalid: expected a grey level that image 0"):
        inked_points(images, 0.95)


def test_subsets_without_replacement_then_cycling_and_bounded_jitter():
    coords = torch.arange(20, dtype=torch.float32).reshape(1, 10, 2).repeat(2, 1, 1)  # 10 distinct points
    counts = torch.tensor([10, 3])
    picked = sample_points(coords, counts, 6, 0.0, torch.Generator().manual_seed(0))
    assert picked.shape == (2, 6, 2)
    assert len({tuple(p) for p in picked[0].tolist()}) == 6  # 6 distinct of 10
    first3 = {tuple(p) for p in coords[1, :3].tolist()}
    assert {tuple(p) for p in picked[1, :3].tolist()} == first3  # every point once, then again
    assert {tuple(p) for p in picked[1, 3:].tolist()} == first3
    jittered = sample_points(coords, counts, 6, 0.5, torch.Generator().manual_seed(0))
    assert 0 < float((jittered - picked).abs().max()) <= 0.5 / HALF
    again = sample_points(coords, counts, 6, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(jittered, again)


def test_real_point_sets_and_features():
    train, test = load_point_sets()
    assert train.coords.shape[0] == 4000 and test.coords.shape[0] == 1000
    assert int(train.counts.min()) > 0 and float(train.counts.float().mean()) > 50
    assert float(train.coords.abs().max()) < 1.0
    tokens = point_features(torch.rand(3, 5, 2), 8)
    assert tokens.shape == (3, 5, token_channels(8)) == (3, 5, 34)
    assert point_features(torch.rand(3, 5, 2), 0).shape == (3, 5, 2) and token_channels(0) == 2


def test_permuting_the_points_leaves_the_prediction_unchanged():
    task = PointCloudTask()
    model = task.build_model().eval()
    points, _ = task.test_points()
    points = points[:32]  # (32, 96, 2)
    perm = torch.randperm(points.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(task.tokens(points))
        permuted = model(task.tokens(points[:, perm]))
    # a different summation order rounds differently: equal within float32 rounding, not bit for bit
    torch.testing.assert_close(permuted, logits, rtol=0, atol=1e-5)
    assert torch.equal(permuted.argmax(-1), logits.argmax(-1))
    # the check can fail: the same tokens with a position feature appended do depend on the order
    # (each point's place in the set appended to its token: the order becomes part of the input)
    slot = torch.linspace(-1, 1, 96).expand(32, 96)[..., None]  # (32, 96, 1)
    positional = create_model("perceiver-io-pointcloud", input_channels=35).eval()
    with torch.no_grad():
        diff = (positional(torch.cat([task.tokens(points), slot], -1))
                - positional(torch.cat([task.tokens(points[:, perm]), slot], -1))).abs().max()
    assert float(diff) > 1e-3


def test_settings_and_model_checks():
    for bad in ({"num_points": 0}, {"threshold": 0.0}, {"jitter": -1.0}, {"num_bands": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            PointCloudTask(**bad)
    with pytest.raises(ConfigError, match="model='perceiver-io-mnist'.*perceiver-io-pointcloud"):
        PointCloudTask(model="perceiver-io-mnist").build_model()
    model = PointCloudTask(num_bands=3).build_model()
    assert model.config.input_channels == 14
    assert PointCloudTask().for_model(model).num_bands == 3  # eval reads the bands off the model
    with pytest.raises(ConfigError, match="this checkpoint is a Perceiver IO image classifier"):
        PointCloudTask().for_model(create_model("perceiver-io-mnist"))


def test_tiny_run_resumes_exactly_and_evals(tmp_path, capsys):
    recipe = RECIPES["pointcloud"]()
    assert isinstance(recipe.task, PointCloudTask) and recipe.engine.epochs == 50
    engine = EngineConfig(steps=4, epochs=None, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=2,
                          eval_every=0)
    result = run_task(recipe.task, engine, tmp_path, **QUIET)
    assert result["num_test"] == 1000 and 0.0 <= result["test_accuracy"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["num_points"] == 96
    final = load_file(tmp_path / "model" / "model.safetensors")
    # resuming from step 2 replays steps 3-4 (subsets, jitter, dropout from the checkpointed RNG) bit for bit
    run_task(recipe.task, engine, tmp_path, resume=tmp_path / "checkpoints" / "step-00000002", **QUIET)
    again = load_file(tmp_path / "model" / "model.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    capsys.readouterr()
    assert main(["eval", "pointcloud", "--checkpoint", str(tmp_path / "model")]) == 0
    assert f"test_accuracy: {result['test_accuracy']}" in capsys.readouterr().out
