"""Official optical-flow Haiku parameters (``optical_flow_checkpoint.pystate`` layout) -> PerceiverIOFlow.

The expected module names are written out here from the official naming rules (docs/checkpoints.md),
not taken from the converter's table, and the synthetic trees carry the official shapes (Linear
``w [in, out]``, ``pos_embs [N, C]``, LayerNorm ``scale``/``offset``).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from testkit.models import official_haiku_tree, randomize_

from perceivers.cli.main import main
from perceivers.converters import haiku as hk
from perceivers.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION = ["attention/linear", "attention/linear_1", "attention/linear_2", "attention/linear_3", "mlp/linear",
             "mlp/linear_1"]


def official_flow_modules(num_layers: int) -> set[str]:
    enc, dec = "perceiver_encoder/~", "flow_decoder/~/basic_decoder"
    cross = ["layer_norm", "layer_norm_1", "layer_norm_2", *ATTENTION]
    names = {"image_preprocessor/patches_linear", f"{enc}/trainable_position_encoding", f"{dec}/output"}
    names |= {f"{enc}/cross_attention/{m}" for m in cross} | {f"{dec}/cross_attention/{m}" for m in cross}
    for i in range(num_layers):
        layer = f"{enc}/self_attention" + (f"_{i}" if i else "")
        names |= {f"{layer}/{m}" for m in ("layer_norm", "layer_norm_1", *ATTENTION)}
    return names


def test_released_flow_names_and_shapes():
    model = create_model("perceiver-io-flow", device="meta")
    rows = hk.model_rows(model.config)
    assert {m for m, _, _ in rows} == official_flow_modules(24)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    ours = {m: o for m, o, _ in rows}
    assert shapes[ours["image_preprocessor/patches_linear"] + ".weight"][::-1] == (54, 64)  # official w [54, 64]
    assert shapes[ours["flow_decoder/~/basic_decoder/output"] + ".weight"][::-1] == (322, 2)
    assert shapes[ours["perceiver_encoder/~/trainable_position_encoding"]] == (2048, 512)
    assert hk.guess_model_name({m: {} for m in official_flow_modules(24)}) == "perceiver-io-flow"


def test_official_tree_converts_exactly_through_the_cli(tmp_path):
    model = randomize_(create_model("perceiver-io-flow-debug"), 0.3).eval()
    tree = official_haiku_tree(model)
    assert set(tree) == official_flow_modules(2)
    assert tree["image_preprocessor/patches_linear"]["w"].shape == (54, 16)  # [in, out]
    path = tmp_path / "optical_flow_checkpoint.pystate"
    path.write_bytes(pickle.dumps(tree))
    assert main(["convert", "haiku", str(path), str(tmp_path / "out"), "--model", "perceiver-io-flow-debug"]) == 0
    from perceivers import from_pretrained

    converted = from_pretrained(tmp_path / "out")
    w = tree["flow_decoder/~/basic_decoder/cross_attention/attention/linear"]["w"]
    assert torch.equal(converted.decoder.cross_attend.attention.q_proj.weight, torch.from_numpy(w.T))
    frames = torch.rand(2, 2, 3, 12, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(converted(frames), model(frames))


def test_missing_and_unexpected_flow_modules_are_listed():
    model = create_model("perceiver-io-flow-debug")
    tree = official_haiku_tree(model)
    del tree["flow_decoder/~/basic_decoder/output"]
    tree["flow_decoder/~/basic_decoder/~/trainable_position_encoding"] = {"pos_embs": np.zeros((192, 322), np.float32)}
    with pytest.raises(ValueError) as err:
        hk.convert_tree(tree, hk.model_rows(model.config))
    assert "missing module: flow_decoder/~/basic_decoder/output" in str(err.value)
    assert "unexpected: flow_decoder/~/basic_decoder/~/trainable_position_encoding/pos_embs" in str(err.value)
