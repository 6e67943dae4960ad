"""`perceivers train flow`: warped pairs whose flow is right by construction, the Middlebury ground truth, the
classical baselines, the colour code, and a tiny end-to-end run (train, metrics.json, flow.png, eval)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError, UserError
from perceivers.data.flow_pairs import (
    WarpedPairs,
    block_matching,
    end_point_error,
    flow_to_rgb,
    middlebury_pair,
    photographs,
    warp,
)
from perceivers.training import EngineConfig, run_task
from perceivers.training.recipes import RECIPES
from perceivers.training.tasks_flow import FlowTask, classical_flow

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a, **k: None}


def test_warp_moves_content_by_the_flow():
    image = torch.rand(3, 20, 24)
    flow = torch.zeros(12, 16, 2)
    flow[..., 0], flow[..., 1] = 2.0, -1.0
    frame1 = warp(image, flow, margin=4)  # frame1(x) = image(x + 4 + flow)
    assert torch.allclose(frame1, image[:, 3:15, 6:22], atol=1e-5)


def test_pairs_are_deterministic_and_their_flow_is_exact():
    pairs = WarpedPairs(photographs(("camera",)), size=(24, 32), num_pairs=3, max_shift=3.0, seed=5)
    (f1, g1), (f2, g2) = pairs[1], pairs[1]
    assert torch.equal(f1, f2) and torch.equal(g1, g2) and not torch.equal(pairs[0][1], g1)
    assert f1.shape == (2, 3, 24, 32) and g1.shape == (24, 32, 2) and -1 <= float(f1.min()) <= float(f1.max()) <= 1
    assert end_point_error(torch.zeros_like(g1), g1) > 0.5
    # frame 2 sampled at x + flow(x) is frame 1 wherever that point is inside frame 2
    frame2 = torch.nn.functional.pad(f1[1], (4, 4, 4, 4))
    back = warp(frame2, g1, margin=4)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    x, y = xs + g1[..., 0], ys + g1[..., 1]
    inside = (x >= 0) & (x <= 31) & (y >= 0) & (y <= 23)
    assert float(inside.float().mean()) > 0.3
    assert torch.allclose(back[:, inside], f1[0][:, inside], atol=1e-4)


def test_block_matching_finds_a_translation():
    image = torch.rand(3, 30, 40, generator=torch.Generator().manual_seed(0))
    frames = torch.stack([image[:, 5:25, 5:35], image[:, 7:27, 2:32]])  # content moves by (+3, -2)
    flow = block_matching(frames, radius=4, patch=5)
    assert flow[4:-4, 4:-4].tolist() == [[[3.0, -2.0]] * 22] * 12


def test_middlebury_ground_truth_is_minus_disparity_where_known():
    frames, flow, valid = middlebury_pair((32, 48))
    assert frames.shape == (2, 3, 32, 48) and flow.shape == (32, 48, 2) and valid.dtype == torch.bool
    assert 0.5 < float(valid.float().mean()) < 1.0  # skimage marks unknown disparities inf: those cells drop out
    assert float(flow[..., 0][valid].max()) < 0 and float(flow[..., 1].abs().max()) == 0
    assert float(flow[..., 0][~valid].abs().max()) == 0
    # disparities 7..60 px on 741 columns, shrunk to 48 columns
    assert 7 * 48 / 741 * 0.9 < -float(flow[..., 0][valid].max()) and -float(flow[..., 0].min()) < 60 * 48 / 741
    classical, method = classical_flow(frames)
    assert end_point_error(classical, flow, valid) < end_point_error(torch.zeros_like(flow), flow, valid)
    assert method in ("opencv farneback", "block matching (numpy)")


def test_colour_code():
    flow = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [-3.0, 0.0]]])
    rgb = flow_to_rgb(flow, 3.0, valid=torch.tensor([[True, True, False]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 2].tolist() == [0, 0, 0]
    assert len(set(rgb[0, 1].tolist())) > 1  # moving: saturated


def test_missing_scikit_image_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(UserError, match=r"scikit-image.*perceivers\[flow\]"):
        photographs(("camera",))


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="max_shift"):
        FlowTask(max_shift=-1.0)
    with pytest.raises(ConfigError, match="model='perceiver-io-mlm-stdlib'.*perceiver-io-flow-small"):
        FlowTask(model="perceiver-io-mlm-stdlib").build_model()


def test_tiny_run_writes_metrics_png_and_evals(tmp_path, capsys):
    recipe = RECIPES["flow"]()
    assert isinstance(recipe.task, FlowTask) and recipe.task.model == "perceiver-io-flow-small"
    task = FlowTask(model="perceiver-io-flow-debug", eval_pairs=2, max_shift=2.0)
    engine = EngineConfig(steps=2, epochs=None, batch_size=4, lr=1e-3, log_every=1, eval_every=0)
    result = run_task(task, engine, tmp_path, **QUIET)
    assert result["recipe"] == "flow" and result["image_size"] == [12, 16]
    assert result["middlebury_zero_flow_epe"] > 0 and result["middlebury_epe"] >= 0
    assert result["classical_method"] in ("opencv farneback", "block matching (numpy)")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["middlebury_epe"] == result["middlebury_epe"]
    png = (tmp_path / "flow.png").read_bytes()
    assert png.startswith(b"\x89PNG") and int.from_bytes(png[16:20], "big") == (4 * 16 + 3 * 2) * 6
    capsys.readouterr()
    assert main(["eval", "flow", "--checkpoint", str(tmp_path / "model"), "--eval-pairs", "2",
                 "--max-shift", "2"]) == 0
    assert f"middlebury_epe: {result['middlebury_epe']}" in capsys.readouterr().out
