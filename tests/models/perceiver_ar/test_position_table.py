"""Perceiver AR absolute position table size as a config field (official: the dataset's ``event_idx_size``,
``max_context_length + 1`` for the copy task, ``+ 2`` for text)."""

from __future__ import annotations

import pytest
import torch

from perceivers.core.errors import ConfigError
from perceivers.models import from_pretrained
from perceivers.models.perceiver_ar.model import (
    PerceiverAR,
    PerceiverARConfig,
    sinusoid_table,
)

TINY = {"vocab_size": 11, "max_context_length": 12, "num_latents": 4, "num_channels": 8, "num_latent_channels": 8,
        "num_self_attend_layers": 1, "num_cross_attend_heads": 2, "num_self_attend_heads": 2,
        "cross_attend_widening_factor": 2, "self_attend_widening_factor": 2, "position_encoding": "absolute"}


def test_default_table_is_context_plus_one():
    config = PerceiverARConfig(**TINY)
    assert config.position_table_size is None
    assert PerceiverAR(config).position_embeddings.shape == (13, 8)


def test_table_size_field_sizes_the_table_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = PerceiverARConfig(**TINY, position_table_size=14)
    model = PerceiverAR(config).eval()
    assert model.position_embeddings.shape == (14, 8)
    assert torch.equal(model.position_embeddings, sinusoid_table(14, 8))
    assert config.num_positions == 13
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert loaded.config == config
    ids = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(ids), loaded(ids))


@pytest.mark.parametrize(("overrides", "words"), [
    ({"position_table_size": 12}, r"max_context_length \+ 1 = 13"),
    ({"position_table_size": 20, "position_encoding": "rotary"}, "None unless"),
    ({"position_table_size": 20, "position_grid": (2, 2), "max_context_length": 5}, "None unless"),
])
def test_bad_table_size_is_refused(overrides, words):
    with pytest.raises(ConfigError, match=words) as info:
        PerceiverARConfig(**{**TINY, **overrides})
    assert "position_table_size" in str(info.value)
