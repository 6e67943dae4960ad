"""Checkpoint folders: format version, one-unit saves, and what a user sees after an interrupted save."""

from __future__ import annotations

import json
import os

import pytest
import torch

import perceivers
from perceivers.models.hub import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME


@pytest.fixture()
def saved(tmp_path):
    model = perceivers.create_model("perceiver-ar-debug").eval()
    return model, model.save_pretrained(tmp_path / "ar")


def _edit_config(folder, **changes):
    path = folder / CONFIG_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_config_json_records_the_format_version(saved):
    _, folder = saved
    assert json.loads((folder / CONFIG_NAME).read_text())["format_version"] == FORMAT_VERSION


def test_a_newer_format_version_is_refused(saved):
    _, folder = saved
    _edit_config(folder, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match=rf"format_version {FORMAT_VERSION + 1}, newer than .* upgrade perceivers"):
        perceivers.from_pretrained(folder)


@pytest.mark.parametrize("bad", [0, "1", True, None])
def test_a_malformed_format_version_is_refused(saved, bad):
    _, folder = saved
    _edit_config(folder, format_version=bad)
    with pytest.raises(ValueError, match="format_version=.* is invalid: expected an int >= 1"):
        perceivers.from_pretrained(folder)


def test_saving_over_a_folder_replaces_both_files_together(saved):
    model, folder = saved
    other = perceivers.create_model("perceiver-ar-debug", num_latents=4)
    other.save_pretrained(folder)
    loaded = perceivers.from_pretrained(folder)
    assert loaded.config == other.config
    ids = torch.randint(0, 259, (1, 32))
    torch.testing.assert_close(loaded(ids), other.eval()(ids), rtol=0, atol=0)


def test_a_missing_folder_points_at_the_copy_an_interrupted_save_left(saved, monkeypatch):
    model, folder = saved
    real_rename, calls = os.rename, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(folder)
    monkeypatch.setattr(os, "rename", real_rename)
    with pytest.raises(FileNotFoundError, match=r"interrupted save left complete copies beside it: .*\.ar\.(old|new)-"):
        perceivers.from_pretrained(folder)


def test_a_folder_without_weights_is_named(saved):
    _, folder = saved
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        perceivers.from_pretrained(folder)


def test_a_short_weights_file_never_replaces_a_good_folder(saved, monkeypatch):
    """safetensors' writer can leave a short file without an error (seen on a full device): the save reads the
    header back, raises an OSError naming the file, and the folder saved before stays whole."""
    import safetensors.torch

    model, folder = saved
    real_save_file = safetensors.torch.save_file
    before = (folder / WEIGHTS_NAME).read_bytes()

    def short_save_file(state, path, metadata=None):
        real_save_file(state, path, metadata=metadata)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)

    monkeypatch.setattr(safetensors.torch, "save_file", short_save_file)
    with pytest.raises(OSError, match="incomplete"):
        model.save_pretrained(folder)
    assert (folder / WEIGHTS_NAME).read_bytes() == before
    monkeypatch.undo()
    perceivers.from_pretrained(folder)  # still loads
