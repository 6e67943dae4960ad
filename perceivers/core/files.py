"""Files that are never half-written: atomic writes, JSON objects in and out."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist renames inside ``directory`` (best effort: some file systems refuse to open a folder)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def json_writer(data: dict[str, Any]) -> Callable[[str], None]:
    """A ``write(path)`` that writes ``data`` as indented, key-sorted JSON (for :func:`atomic_write` and
    :func:`atomic_folder`)."""

    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")

    return write


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write(path, json_writer(data))


#: Deepest nesting accepted in a JSON file we read (configs are a few levels deep).
MAX_JSON_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping once past ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a JSON file that must hold an object at most :data:`MAX_JSON_DEPTH` deep; ``ValueError`` naming the
    file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValueError(f"{path} is nested too deeply to be a config (more than {MAX_JSON_DEPTH} levels)") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"{path} is nested too deeply to be a config (more than {MAX_JSON_DEPTH} levels)")
    return data


def interrupted_saves(directory: str | os.PathLike) -> list[Path]:
    """Complete copies an interrupted :func:`atomic_folder` left beside ``directory`` (newest first)."""
    path = Path(directory)
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.iterdir() if p.is_dir() and (p.name.startswith(f".{path.name}.old-")
                                                                  or p.name.startswith(f".{path.name}.new-"))]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def atomic_folder(directory: str | os.PathLike, writers: dict[str, Callable[[str], None]]) -> Path:
    """Write the files ``{name: write(tmp_path)}`` into ``directory`` as one unit.

    The files are written and fsynced in a hidden sibling folder, which then takes the place of ``directory``
    by rename; an existing ``directory`` is first renamed aside, and files in it that ``writers`` does not name
    are moved into the new folder. A crash at any point leaves either the old or the new folder complete on disk
    (under its hidden name, see :func:`interrupted_saves`, if the crash fell between the two renames): never
    new weights beside an old config.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        for name, write in writers.items():
            atomic_write(new / name, write)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if not path.exists():
        os.rename(new, path)
        fsync_dir(path.parent)
        return path
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.rmdir(old)  # a unique name to rename onto
    os.rename(path, old)
    os.rename(new, path)
    fsync_dir(path.parent)
    for item in old.iterdir():  # keep what else the folder held (a README, training records, ...)
        if item.name not in writers:
            os.rename(item, path / item.name)
    shutil.rmtree(old, ignore_errors=True)
    return path
