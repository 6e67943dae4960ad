"""One-line errors of ``convert to-hf`` / ``convert hf`` for models and files transformers cannot take."""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch
from testkit.cli import cli_error

from perceivers import get_config
from perceivers.converters.hf import SUPPORTED, convert_hf_folder
from perceivers.models.registry import get_entry

#: torch.load's refusal advises retrying unsafely; none of these may reach the user.
UNSAFE_ADVICE = ("weights_only=False", "set to `False`", "Re-running", "trusted source", "safe_globals")


@pytest.mark.parametrize(("variant", "family"), [("perceiver-ar-debug", "Perceiver AR"), ("hip-debug", "HiP"),
                                                 ("hip-mae-digits-classifier", "HiP")])
def test_to_hf_names_the_family_and_what_converts(variant, family, tmp_path, capsys):
    entry = get_entry(variant)
    entry.model_cls(get_config(variant).debug_size()).save_pretrained(tmp_path / "ours")
    err = cli_error(capsys, ["convert", "to-hf", str(tmp_path / "ours"), str(tmp_path / "out")])
    assert f"transformers has no {family}" in err and "only Perceiver IO models" in err
    assert all(head in err for head in SUPPORTED)
    assert not (tmp_path / "out").exists()


def _hf_folder_with_bin(folder, state) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "perceiver",
                                                    "architectures": ["PerceiverForMaskedLM"]}))
    torch.save(state, folder / "pytorch_model.bin")


def test_refused_pickle_never_advises_unsafe_loading(tmp_path, capsys):
    src = tmp_path / "hf"
    _hf_folder_with_bin(src, {"w": torch.zeros(2), "x": collections.OrderedDict(f=os.getcwd)})
    err = cli_error(capsys, ["convert", "hf", str(src), str(tmp_path / "out")])
    assert "pytorch_model.bin is corrupted or unreadable" in err and "getcwd" in err and "model.safetensors" in err
    assert not any(a in err for a in UNSAFE_ADVICE), err
    with pytest.raises(ValueError) as info:
        convert_hf_folder(src)
    assert not any(a in str(info.value) for a in UNSAFE_ADVICE)
    (src / "pytorch_model.bin").write_bytes(b"not a zip file at all")  # corrupt: torch's reason is kept
    err = cli_error(capsys, ["convert", "hf", str(src), str(tmp_path / "out")])
    assert "unreadable" in err and not any(a in err for a in UNSAFE_ADVICE), err
    assert not (tmp_path / "out").exists()
