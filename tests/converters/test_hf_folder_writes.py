"""``convert_to_hf_folder`` writes the HF folder as one unit (``core.files.atomic_folder``): a conversion that fails
while writing leaves the previous folder whole, never new weights beside an old config. No transformers needed: the
model is built from an HF config dict."""

from __future__ import annotations

import pytest
import torch

import perceivers.core.files
from perceivers.converters.hf import FOURIER, convert_to_hf_folder, hf_config_to_ours
from perceivers.core.errors import ConfigError
from perceivers.core.files import interrupted_saves
from perceivers.models import create_model
from perceivers.models.perceiver_io import PerceiverIO

HF_FOURIER = {"architectures": [FOURIER], "model_type": "perceiver", "num_latents": 4, "d_latents": 16,
              "num_blocks": 1, "num_self_attends_per_block": 1, "num_self_attention_heads": 1,
              "num_cross_attention_heads": 1, "image_size": 8, "num_labels": 3}


def _ours(path, seed: int):
    _, config = hf_config_to_ours(HF_FOURIER, hf_compat=True)
    torch.manual_seed(seed)
    return PerceiverIO(config).save_pretrained(path)


def _contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def converted(tmp_path):
    """``(out, contents)``: an HF folder converted from one model (plus a file of the user's), and a second model
    of the same shape with other weights."""
    out = convert_to_hf_folder(_ours(tmp_path / "first", seed=0), tmp_path / "hf")
    (out / "README.md").write_text("notes of the user")
    return out, _contents(out), _ours(tmp_path / "second", seed=1)


def _fail_on(name: str, monkeypatch) -> None:
    real = perceivers.core.files.atomic_write

    def write(path, writer):
        if path.name == name:
            with open(path, "wb") as fh:  # half a file, then the crash
                fh.write(b"{\"architec")
            raise OSError(f"disk full while writing {name}")
        real(path, writer)

    monkeypatch.setattr(perceivers.core.files, "atomic_write", write)


@pytest.mark.parametrize("failing", ["config.json", "model.safetensors"])
def test_a_failed_conversion_leaves_the_old_folder_whole(failing, converted, monkeypatch):
    out, before, second = converted
    _fail_on(failing, monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        convert_to_hf_folder(second, out)
    assert _contents(out) == before  # old weights with their own config, the user's file kept
    assert interrupted_saves(out) == [] and sorted(p.name for p in out.parent.iterdir()) == ["first", "hf",
                                                                                              "second"]


def test_a_new_conversion_replaces_both_files_and_keeps_other_files(converted):
    out, before, second = converted
    assert convert_to_hf_folder(second, out) == out
    after = _contents(out)
    assert after["README.md"] == before["README.md"] and after["config.json"] == before["config.json"]
    assert after["model.safetensors"] != before["model.safetensors"]


def test_a_model_hf_has_no_class_for_is_a_config_error(tmp_path):
    ar = create_model("perceiver-ar-debug").save_pretrained(tmp_path / "ar")
    with pytest.raises(ConfigError, match="only Perceiver IO models"):
        convert_to_hf_folder(ar, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
