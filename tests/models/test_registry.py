"""Model registry: names, typo suggestions, overrides."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from perceivers import PerceiverIO, create_model, get_config, list_models
from perceivers.core.registry import register_model
from perceivers.models import get_entry
from perceivers.models.perceiver_io.config import PerceiverIOConfig

NAMES = {
    "perceiver-io-imagenet-learned",
    "perceiver-io-imagenet-fourier",
    "perceiver-io-imagenet-conv",
    "perceiver-imagenet",
    "perceiver-io-digits",
}


def test_list_models_contains_the_variants():
    names = list_models()
    assert NAMES <= set(names)
    assert names == sorted(names)
    imagenet = set(list_models("imagenet"))
    assert NAMES - {"perceiver-io-digits"} <= imagenet and all("imagenet" in n for n in imagenet)
    assert list_models("no-such-thing") == []


def test_entries_have_descriptions_and_classes():
    for name in NAMES:
        entry = get_entry(name)
        assert entry.name == name and entry.description and entry.model_cls is PerceiverIO


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError) as info:
        create_model("perceiver-io-imagenet-fourer")
    msg = str(info.value)
    assert "perceiver-io-imagenet-fourer" in msg
    assert "Did you mean" in msg and "'perceiver-io-imagenet-fourier'" in msg


def test_unrelated_name_lists_known_models():
    with pytest.raises(ValueError, match="Known models") as info:
        get_config("zzzzzzzz")
    assert "perceiver-io-digits" in str(info.value)


def test_non_string_name():
    with pytest.raises(TypeError, match="str"):
        create_model(3)


def test_nested_dict_overrides():
    base = get_config("perceiver-io-digits")
    m = create_model("perceiver-io-digits", decoder={"num_outputs": 3}, encoder={"num_blocks": 1})
    assert base.decoder.num_outputs != 3 and base.encoder.num_blocks != 1
    assert m.config.decoder.num_outputs == 3
    assert m.config.decoder.num_query_channels == base.decoder.num_query_channels  # untouched fields are kept
    assert m.config.encoder.num_blocks == 1 and m.config.encoder.num_latents == base.encoder.num_latents
    assert m.config.preprocessor == base.preprocessor
    assert m.decoder.output.out_features == 3
    p = base.preprocessor
    assert m.eval()(torch.rand(2, p.in_channels, *p.image_size)).shape == (2, 3)


def test_overrides_on_meta_big_model():
    m = create_model("perceiver-io-imagenet-conv", device="meta", decoder={"num_outputs": 10})
    assert m.decoder.output.weight.shape == (10, 1024) and m.decoder.output.weight.is_meta
    assert m.num_parameters() == 48_646_522 - 990 * 1024 - 990


def test_top_level_override():
    base = get_config("perceiver-io-digits")
    other = "relu" if base.activation != "relu" else "gelu"
    cfg = get_config("perceiver-io-digits", activation=other)
    assert isinstance(cfg, PerceiverIOConfig) and cfg.activation == other
    assert get_config("perceiver-io-digits").activation == base.activation  # registry copy untouched


def test_unknown_override_field_lists_valid_fields():
    with pytest.raises(ValueError, match="bogus") as info:
        create_model("perceiver-io-digits", bogus=1)
    assert "encoder" in str(info.value) and "decoder" in str(info.value)
    with pytest.raises(ValueError, match="num_latentz") as info:
        create_model("perceiver-io-digits", encoder={"num_latentz": 3})
    assert "num_latents" in str(info.value)


def test_invalid_override_value():
    with pytest.raises(ValueError, match="num_blocks"):
        create_model("perceiver-io-digits", encoder={"num_blocks": 0})


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register_model("perceiver-io-digits", model_cls=PerceiverIO)(lambda: None)


def test_configs_are_fresh_and_frozen():
    a, b = get_config("perceiver-io-digits"), get_config("perceiver-io-digits")
    assert a == b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.activation = "relu"  # frozen dataclass


def test_unknown_names_are_user_errors():
    """The command line prints a UserError in one line: an unknown model name is the user's mistake."""
    from perceivers.core.errors import ConfigError, ConfigTypeError

    with pytest.raises(ConfigError, match="unknown model 'perceiver-io-digitz'.*Did you mean 'perceiver-io-digits'"):
        get_entry("perceiver-io-digitz")
    with pytest.raises(ConfigTypeError, match="model name must be a str, got int"):
        get_entry(3)
