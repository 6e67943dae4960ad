"""Per-block MLP widening of HiP (official ``VARIANTS`` give one factor per block): built, validated, saved and
loaded back exactly."""

from __future__ import annotations

import json

import pytest
import torch

from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.models import from_pretrained
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP

BLOCKS = {"modalities": {"image": (12, 3)}, "num_groups": (2, 1, 2), "num_self_attend_layers": (1, 1, 1),
          "num_latents": (2, 4, 2), "num_channels": (8, 16, 8), "num_self_attend_heads": (2, 2, 2),
          "num_cross_attend_heads": (1, 1, 1), "num_embedding_channels": 8, "num_position_encoding_channels": None}


def test_per_block_widening_sizes_each_block_mlp():
    model = HiP(HiPConfig(**BLOCKS, self_attend_widening_factor=(4, 2, 3), cross_attend_widening_factor=(1, 3, 2)))
    for block, (self_w, cross_w) in zip(model.blocks, [(4, 1), (2, 3), (3, 2)], strict=True):
        d = block.latents.shape[1]
        assert block.self_attends[0].mlp.fc1.out_features == self_w * d
        assert block.cross_attend.mlp.fc1.out_features == cross_w * d


def test_per_block_widening_round_trips_through_config_json(tmp_path):
    torch.manual_seed(0)
    config = HiPConfig(**BLOCKS, self_attend_widening_factor=(4, 2, 3), cross_attend_widening_factor=(1, 3, 2))
    model = HiP(config).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config"]["self_attend_widening_factor"] == [4, 2, 3]
    loaded = from_pretrained(tmp_path).eval()
    assert loaded.config == config
    inputs = model.example_inputs(generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(**inputs)["input_reconstruction"]["image"],
                       loaded(**inputs)["input_reconstruction"]["image"])


def test_scalar_widening_is_every_block():
    config = HiPConfig(**BLOCKS, self_attend_widening_factor=2, cross_attend_widening_factor=3)
    assert config.self_attend_widening_factor == (2, 2, 2)
    assert config.cross_attend_widening_factor == (3, 3, 3)
    assert HiPConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("value", "error", "words"), [
    ((4, 4), ConfigError, "3 entries"), ((4, 0, 4), ConfigError, ">= 1"), (0, ConfigError, ">= 1"),
    ((4, 2.5, 4), ConfigTypeError, "must be an int"), ("4", ConfigTypeError, "tuple of ints"),
])
def test_bad_widening_is_refused_naming_the_field(value, error, words):
    with pytest.raises(error, match=words) as info:
        HiPConfig(**BLOCKS, self_attend_widening_factor=value)
    assert "self_attend_widening_factor" in str(info.value)
