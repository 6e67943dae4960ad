"""Official MLM Haiku parameters (``language_perceiver_io_bytes.pickle`` layout) -> PerceiverIOLanguage."""

from __future__ import annotations

import pickle

import pytest
import torch
from testkit.models import official_haiku_tree, randomize_

from perceivers.converters import haiku as hk
from perceivers.models import create_model


def test_official_mlm_tree_converts_exactly(tmp_path):
    model = randomize_(create_model("perceiver-io-language-debug"), 0.3).eval()
    path = tmp_path / "language_perceiver_io_bytes.pickle"
    path.write_bytes(pickle.dumps(official_haiku_tree(model)))
    converted = hk.convert_haiku_file(path, "perceiver-io-language-debug")
    ids = torch.randint(0, 262, (2, 20))
    with torch.no_grad():
        assert torch.equal(converted(ids), model(ids))


def test_released_mlm_names_and_guess():
    config = create_model("perceiver-io-language-mlm", device="meta").config
    modules = {m for m, _, _ in hk.model_rows(config)}
    assert {"embed", "trainable_position_encoding", "embedding_decoder",
            "basic_decoder/cross_attention/attention/linear_3",
            "perceiver_encoder/~/self_attention_25/mlp/linear_1"} <= modules
    assert "perceiver_encoder/~/self_attention_26/layer_norm" not in modules
    assert hk.guess_model_name({m: {} for m in modules}) == "perceiver-io-language-mlm"


def test_missing_embedding_bias_is_reported():
    model = create_model("perceiver-io-language-debug")
    tree = official_haiku_tree(model)
    del tree["embedding_decoder"]
    with pytest.raises(ValueError, match="missing module: embedding_decoder"):
        hk.convert_tree(tree, hk.model_rows(model.config))
