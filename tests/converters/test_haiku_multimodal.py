"""Official multimodal Haiku parameters (``video_autoencoding_checkpoint.pystate`` layout) -> PerceiverIOMultimodal.

The expected module names and shapes are written out here from the official naming rules
(docs/checkpoints.md), not taken from the converter's table.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from testkit.models import official_haiku_tree, randomize_

from perceivers import from_pretrained
from perceivers.cli.main import main
from perceivers.converters import haiku as hk
from perceivers.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION = ["attention/linear", "attention/linear_1", "attention/linear_2", "attention/linear_3", "mlp/linear",
             "mlp/linear_1"]
CROSS = ["layer_norm", "layer_norm_1", "layer_norm_2", *ATTENTION]


def official_modules(num_layers: int) -> set[str]:
    dec = "multimodal_decoder/~/basic_decoder"
    names = {"encoder/~/trainable_position_encoding", f"{dec}/output",
             "classification_decoder/~/basic_decoder/~/trainable_position_encoding",
             "audio_postprocessor/linear", "projection_postprocessor/linear", "classification_postprocessor/linear"}
    for m in ("audio", "image", "label"):
        names |= {f"multimodal_preprocessor/{m}_padding", f"multimodal_preprocessor/{m}_mask_token",
                  f"multimodal_decoder/~decoder_query/{m}_padding"}
    names |= {f"encoder/~/cross_attention/{m}" for m in CROSS} | {f"{dec}/cross_attention/{m}" for m in CROSS}
    for i in range(num_layers):
        layer = "encoder/~/self_attention" + (f"_{i}" if i else "")
        names |= {f"{layer}/{m}" for m in ("layer_norm", "layer_norm_1", *ATTENTION)}
    return names


def test_released_names_and_shapes():
    model = create_model("perceiver-io-multimodal-kinetics", device="meta")
    rows = hk.model_rows(model.config)
    assert {m for m, _, _ in rows} == official_modules(8)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    ours = {m: o for m, o, _ in rows}
    official = {  # official shapes (pos_embs [N, C]; Linear w [in, out])
        "multimodal_preprocessor/audio_padding": (1, 303), "multimodal_preprocessor/image_padding": (1, 461),
        "multimodal_preprocessor/label_padding": (1, 4), "multimodal_preprocessor/label_mask_token": (1, 704),
        "multimodal_decoder/~decoder_query/audio_padding": (1, 641),
        "multimodal_decoder/~decoder_query/image_padding": (1, 831),
        "multimodal_decoder/~decoder_query/label_padding": (1, 2),
        "classification_decoder/~/basic_decoder/~/trainable_position_encoding": (1, 1024),
        "encoder/~/trainable_position_encoding": (784, 512)}
    for module, shape in official.items():
        assert shapes[ours[module]] == shape, module
    linears = {"multimodal_decoder/~/basic_decoder/output": (1026, 512), "audio_postprocessor/linear": (512, 16),
               "projection_postprocessor/linear": (512, 3), "classification_postprocessor/linear": (512, 700),
               "encoder/~/cross_attention/attention/linear_1": (704, 704)}
    for module, shape in linears.items():
        assert shapes[ours[module] + ".weight"][::-1] == shape, module
    assert hk.guess_model_name({m: {} for m in official_modules(8)}) == "perceiver-io-multimodal-kinetics"


def test_official_tree_converts_exactly(tmp_path, capsys):
    model = randomize_(create_model("perceiver-io-multimodal-debug"), 0.3).eval()
    tree = official_haiku_tree(model)
    assert set(tree) == official_modules(2)
    assert tree["classification_postprocessor/linear"]["w"].shape == (24, 5)  # [in, out]
    path = tmp_path / "video_autoencoding_checkpoint.pystate"
    path.write_bytes(pickle.dumps(tree))
    assert main(["convert", "haiku", str(path), str(tmp_path / "out"), "--model", "perceiver-io-multimodal-debug"]) == 0
    converted = from_pretrained(tmp_path / "out")
    gen = torch.Generator().manual_seed(0)
    x = {"image": torch.rand(1, 2, 8, 8, 3, generator=gen), "audio": torch.randn(1, 64, generator=gen)}
    with torch.no_grad():
        a = converted(x, subsampled_output_points={"image": torch.arange(0, 128, 7)})
        b = model(x, subsampled_output_points={"image": torch.arange(0, 128, 7)})
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_and_unexpected_modules_listed():
    model = create_model("perceiver-io-multimodal-debug")
    tree = official_haiku_tree(model)
    del tree["multimodal_preprocessor/label_mask_token"]
    tree["multimodal_preprocessor/video_padding"] = {"pos_embs": np.zeros((1, 3), np.float32)}
    with pytest.raises(ValueError) as err:
        hk.convert_tree(tree, hk.model_rows(model.config))
    assert "missing module: multimodal_preprocessor/label_mask_token" in str(err.value)
    assert "unexpected: multimodal_preprocessor/video_padding/pos_embs" in str(err.value)
