"""The one Perceiver IO config: tagged sub-configs in config.json, the task class each config builds, and the
translation of the pre-consolidation layouts (tests/fixtures/legacy_v1) to today's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import perceivers
from perceivers import (
    DecoderConfig,
    EncoderConfig,
    FlowDecoderConfig,
    FlowPreprocessorConfig,
    ImagePreprocessorConfig,
    ModalityConfig,
    MultimodalDecoderConfig,
    MultimodalPreprocessorConfig,
    PerceiverIO,
    PerceiverIOAudio,
    PerceiverIOConfig,
    PerceiverIOFlow,
    PerceiverIOLanguage,
    PerceiverIOMultimodal,
    TextPreprocessorConfig,
)
from perceivers.core.registry import MODEL_TYPES
from perceivers.models import get_config, list_models
from perceivers.models.perceiver_io.legacy import (
    LEGACY_MODEL_TYPES,
    is_current_layout,
    upgrade_layout,
)

LEGACY = Path(__file__).resolve().parents[2] / "fixtures" / "legacy_v1"
ENCODER = EncoderConfig(num_latents=4, num_latent_channels=8, num_blocks=1, num_self_attends_per_block=1,
                        num_self_attend_heads=2)
TASKS = {  # registered debug variant -> (task class, preprocessor tag, decoder tag)
    "perceiver-io-digits": (PerceiverIO, "image", "classification"),
    "perceiver-io-language-debug": (PerceiverIOLanguage, "text", "basic"),
    "perceiver-io-flow-debug": (PerceiverIOFlow, "flow", "flow"),
    "perceiver-io-audioset-debug": (PerceiverIOAudio, "modality", "classification"),
    "perceiver-io-multimodal-debug": (PerceiverIOMultimodal, "multimodal", "multimodal"),
}


def _legacy_config(model_type: str) -> dict:
    return json.loads((LEGACY / model_type / "config.json").read_text())["config"]


# ------------------------------------------------------------------------------------------ today's layout


@pytest.mark.parametrize("name", sorted(TASKS))
def test_one_config_builds_each_task_class(name):
    cls, prep_tag, dec_tag = TASKS[name]
    config = get_config(name)
    assert type(config) is PerceiverIOConfig
    assert (config.preprocessor.type, config.decoder.type) == (prep_tag, dec_tag)
    with torch.device("meta"):
        model = PerceiverIO(config)
    assert type(model) is cls and isinstance(model, PerceiverIO) and model.model_type == "perceiver_io"
    data = config.to_dict()
    assert data["preprocessor"]["type"] == prep_tag and data["decoder"]["type"] == dec_tag
    assert is_current_layout(data) and upgrade_layout(data) is data
    assert PerceiverIOConfig.from_dict(json.loads(json.dumps(data))) == config


@pytest.mark.parametrize("name", sorted(TASKS))
def test_debug_size_keeps_the_task_and_example_inputs_run(name):
    config = get_config(name).debug_size()
    model = PerceiverIO(config).eval()
    assert type(model) is TASKS[name][0] and model.num_parameters() < 30_000
    with torch.no_grad():
        out = model(**model.example_inputs(2, generator=torch.Generator().manual_seed(0)))
    for y in out.values() if isinstance(out, dict) else [out]:
        assert y.shape[0] == 2 and torch.isfinite(y).all()


def test_every_registered_perceiver_io_config_round_trips():
    names = [n for n in list_models() if isinstance(get_config(n), PerceiverIOConfig)]
    # every released Perceiver IO configuration is among them (recipes add their own variants)
    assert {"perceiver-io-imagenet-fourier", "perceiver-io-imagenet-conv", "perceiver-io-language-mlm",
            "perceiver-io-flow", "perceiver-io-multimodal-kinetics", "perceiver-io-audioset"} <= set(names)
    for name in names:
        config = get_config(name)
        assert PerceiverIOConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config, name


def test_saved_folder_has_the_new_model_type_and_tags(tmp_path):
    model = perceivers.create_model("perceiver-io-flow-debug")
    data = json.loads((model.save_pretrained(tmp_path / "flow") / "config.json").read_text())
    assert data["model_type"] == "perceiver_io"
    assert data["config"]["preprocessor"]["type"] == "flow" and data["config"]["decoder"]["type"] == "flow"
    assert type(perceivers.from_pretrained(tmp_path / "flow")) is PerceiverIOFlow


def test_sub_configs_as_tagged_dicts():
    config = PerceiverIOConfig(preprocessor={"type": "text", "num_channels": 8, "max_seq_len": 6}, encoder=ENCODER,
                               decoder={"type": "classification", "num_outputs": 3, "num_query_channels": 8})
    assert config.preprocessor == TextPreprocessorConfig(num_channels=8, max_seq_len=6)
    assert config.decoder == DecoderConfig(num_outputs=3, num_query_channels=8) and config.input_channels == 8
    with pytest.raises(ValueError, match=r"preprocessor\['type'\]"):
        PerceiverIOConfig(preprocessor={"type": "video"}, encoder=ENCODER)
    with pytest.raises(ValueError, match=r"decoder\['type'\]"):
        PerceiverIOConfig(input_channels=4, encoder=ENCODER, decoder={"num_outputs": 3})  # untagged
    with pytest.raises(TypeError, match="preprocessor must be one of"):
        PerceiverIOConfig(preprocessor=EncoderConfig(), encoder=ENCODER)


def test_replace_keeps_or_switches_the_sub_config_kind():
    config = get_config("perceiver-io-digits")
    narrower = config.replace(preprocessor={"num_channels": 16})  # fields of the current image config
    assert narrower.preprocessor.num_channels == 16 and narrower.input_channels == 16 + 34
    flow = config.replace(preprocessor={"type": "flow", "image_size": (8, 8)}, decoder={"type": "flow"})
    assert flow.preprocessor == FlowPreprocessorConfig(image_size=(8, 8)) and flow.decoder == FlowDecoderConfig()
    assert flow.input_channels == flow.preprocessor.output_channels
    projection = config.replace(decoder={"type": "projection"})  # DecoderConfig carries the tag as a field
    assert projection.decoder.type == "projection" and projection.decoder.num_outputs == 10


@pytest.mark.parametrize("preprocessor,decoder", [
    (FlowPreprocessorConfig(image_size=(8, 8)), DecoderConfig()),
    (ImagePreprocessorConfig(image_size=(8, 8)), FlowDecoderConfig()),
    (ModalityConfig(kind="audio", num_samples=64, samples_per_patch=4), MultimodalDecoderConfig()),
    (MultimodalPreprocessorConfig(modalities={"label": ModalityConfig(kind="label", num_classes=3)}),
     DecoderConfig(num_outputs=3)),
    (TextPreprocessorConfig(max_seq_len=8), DecoderConfig(type="projection")),
])
def test_preprocessor_and_decoder_must_pair(preprocessor, decoder):
    with pytest.raises(ValueError, match="decoder.type"):
        PerceiverIOConfig(preprocessor=preprocessor, encoder=ENCODER, decoder=decoder)


def test_a_task_class_refuses_another_tasks_config():
    with pytest.raises(ValueError, match="returns a PerceiverIOFlow"):
        PerceiverIOAudio(get_config("perceiver-io-flow-debug"))
    with pytest.raises(ValueError, match="returns a PerceiverIO\\b"):
        PerceiverIOMultimodal(get_config("perceiver-io-digits"))
    with pytest.raises(TypeError, match="PerceiverIOConfig"):
        PerceiverIO({"input_channels": 4})


# ------------------------------------------------------------------------------------------ older layouts


def test_legacy_model_types_load_through_perceiver_io():
    for name in ("perceiver_io", *LEGACY_MODEL_TYPES):
        assert MODEL_TYPES[name] is PerceiverIO


@pytest.mark.parametrize("model_type,cls", [
    ("perceiver_io", PerceiverIO), ("perceiver_io_language", PerceiverIOLanguage),
    ("perceiver_io_flow", PerceiverIOFlow), ("perceiver_io_audio", PerceiverIOAudio),
    ("perceiver_io_multimodal", PerceiverIOMultimodal),
])
def test_each_old_layout_translates_to_its_task(model_type, cls):
    old = _legacy_config(model_type)
    assert not is_current_layout(old) or model_type == "perceiver_io"  # old image configs lack only their tag
    new = upgrade_layout(old)
    assert is_current_layout(new) and upgrade_layout(new) == new
    assert old == _legacy_config(model_type)  # the input is not modified
    config = PerceiverIOConfig.from_dict(old)
    with torch.device("meta"):
        assert type(PerceiverIO(config)) is cls
    assert PerceiverIOConfig.from_dict(config.to_dict()) == config


def test_old_flow_layout_field_by_field():
    config = PerceiverIOConfig.from_dict(_legacy_config("perceiver_io_flow"))
    assert config.preprocessor == FlowPreprocessorConfig(image_size=(12, 16), num_channels=16, num_bands=8)
    assert config.decoder == FlowDecoderConfig(chunk_size=64)
    assert config.encoder.num_latents == 16 and config.input_channels == config.preprocessor.output_channels


def test_old_multimodal_layout_moves_top_level_fields_into_the_preprocessor():
    old = _legacy_config("perceiver_io_multimodal")
    new = upgrade_layout(old)
    assert "modalities" not in new and "min_padding_size" not in new and "padding_init_scale" not in new
    assert new["preprocessor"]["type"] == "multimodal" and new["preprocessor"]["min_padding_size"] == 4
    assert new["decoder"] == {"type": "multimodal", **old["decoder"]}
    config = PerceiverIOConfig.from_dict(old)
    assert config.preprocessor.input_width == config.input_channels
    assert sorted(config.preprocessor.modalities) == ["audio", "image", "label"]


def test_old_layouts_tags_follow_their_fields():
    text = {"preprocessor": {"vocab_size": 262, "num_channels": 8, "max_seq_len": 6}, "encoder": ENCODER.to_dict(),
            "decoder": {"type": "classification", "num_outputs": 2, "num_query_channels": 8}}
    assert upgrade_layout(text)["preprocessor"]["type"] == "text"
    audio = {"preprocessor": {"kind": "audio", "num_samples": 64, "samples_per_patch": 4}, "encoder": ENCODER.to_dict()}
    assert upgrade_layout(audio)["preprocessor"]["type"] == "modality"
    assert "decoder" not in upgrade_layout(audio)  # the default decoder classifies, as the old one did
    flow = {"preprocessor": {"image_size": [8, 8], "patch_size": 3}, "encoder": ENCODER.to_dict()}  # default decoder
    assert upgrade_layout(flow)["decoder"] == {"type": "flow"}
    image = {"preprocessor": {"prep_type": "pixels", "image_size": [8, 8]}, "encoder": ENCODER.to_dict()}
    assert upgrade_layout(image)["preprocessor"]["type"] == "image"
    for data in (text, audio, flow, image):
        PerceiverIOConfig.from_dict(data)  # each is a valid config once tagged
