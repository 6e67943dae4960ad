"""Atomic files and folders: an interrupted write never leaves a half-written or mixed result."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from perceivers.core.files import (
    atomic_folder,
    atomic_write,
    interrupted_saves,
    read_json_object,
    write_json,
)


def _text(value: str):
    return lambda tmp: open(tmp, "w").write(value)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left behind


def test_atomic_folder_replaces_our_files_and_keeps_the_others(tmp_path):
    folder = tmp_path / "model"
    atomic_folder(folder, {"config.json": _text("1"), "model.safetensors": _text("w1")})
    (folder / "README.md").write_text("notes")
    atomic_folder(folder, {"config.json": _text("2"), "model.safetensors": _text("w2")})
    assert (folder / "config.json").read_text() == "2" and (folder / "model.safetensors").read_text() == "w2"
    assert (folder / "README.md").read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_folder_write_leaves_the_old_folder_whole(tmp_path):
    folder = tmp_path / "model"
    atomic_folder(folder, {"config.json": _text("1"), "model.safetensors": _text("w1")})

    def broken(tmp):
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        atomic_folder(folder, {"model.safetensors": _text("w2"), "config.json": broken})
    assert (folder / "config.json").read_text() == "1" and (folder / "model.safetensors").read_text() == "w1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_crash_between_the_renames_leaves_a_complete_copy_that_is_found(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    atomic_folder(folder, {"config.json": _text("1"), "model.safetensors": _text("w1")})
    real_rename = os.rename
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place: the process dies here
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        atomic_folder(folder, {"config.json": _text("2"), "model.safetensors": _text("w2")})
    monkeypatch.setattr(os, "rename", real_rename)
    assert not folder.exists()
    left = interrupted_saves(folder)
    contents = sorted((p / "config.json").read_text() + (p / "model.safetensors").read_text() for p in left)
    assert contents == ["1w1", "2w2"]  # the old and the new copy are both complete


def test_atomic_folder_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "model").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        atomic_folder(tmp_path / "model", {"config.json": _text("1")})


def test_read_json_object_errors_name_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"c.json must hold a JSON object, got list"):
        read_json_object(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="c.json is not valid JSON"):
        read_json_object(path)
    write_json(path, {"b": 1, "a": [1]})
    assert read_json_object(path) == {"a": [1], "b": 1}


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_is_refused_in_one_line(tmp_path, depth):
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json_object(path)


def test_nesting_of_a_real_config_is_accepted(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"config": {"encoder": {"sizes": [[1, 2], [3]]}}}))
    assert read_json_object(path)["config"]["encoder"]["sizes"] == [[1, 2], [3]]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Saved files and folders are readable by others as open()/mkdir would make them (umask 022 -> 0o644 /
    0o755), not tempfile's owner-only 0o600 / 0o700."""
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", lambda p: Path(p).write_bytes(b"x"))
        folder = atomic_folder(tmp_path / "model", {"config.json": lambda p: Path(p).write_text("{}")})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o644
