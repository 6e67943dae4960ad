"""Files that are never half-written: atomic writes, JSON objects in and out; the OS errors of files and folders
as one-line :class:`FileSystemError`; an exclusive lock on a run folder (:class:`FolderLock`); and
:func:`safe_torch_load`, the one way to read a torch pickle (tensors and containers only)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from perceivers.core.errors import ConfigError, UserError


class FileSystemError(UserError, OSError):
    """A file or folder cannot be written or read for a reason of the operating system (disk full, read-only file
    system, a file where a folder should be, no permission). ``str()`` is one line naming the path and the OS error,
    e.g. ``cannot write runs/x/metrics.json: No space left on device``; also an ``OSError`` with the same ``errno``."""

    def __init__(self, action: str, path: str | os.PathLike, exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else path
        reason = exc.strerror or str(exc) or type(exc).__name__
        super().__init__(exc.errno, reason, str(where))
        self.message = f"cannot {action} {where}: {reason}"

    def __str__(self) -> str:
        return self.message


@contextmanager
def reported_os_errors(action: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` of the block into a :class:`FileSystemError` (``cannot ACTION PATH: REASON``); wrap only
    file and folder operations, never a computation."""
    try:
        yield
    except FileSystemError:
        raise
    except OSError as exc:
        raise FileSystemError(action, path, exc) from exc


class FolderLockedError(UserError):
    """Another process holds the :class:`FolderLock` of a folder."""


class FolderLock:
    """An exclusive lock on ``folder/.lock`` (``fcntl.flock``), held from :meth:`acquire` to :meth:`release`.

    The kernel drops the lock when its process ends, however it ends (SIGKILL included), so a dead run never leaves
    a stale lock; the file keeps the PID of the last holder for the message. Without ``fcntl`` (Windows) this is a
    no-op."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder, self.file, self._fd = Path(folder), Path(folder) / ".lock", None

    def acquire(self) -> Self:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        with reported_os_errors("lock", self.file):
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FileSystemError("lock", self.file, exc) from exc
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise FolderLockedError(f"{self.folder} is in use by another run ({who} holds {self.file}): wait for "
                                    "it to end, or choose another run folder (--out)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path`` (same folder, so the rename is atomic). The file
    gets the permissions ``open()`` would give a new file (0o666 less the umask), not ``mkstemp``'s owner-only."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
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


def bytes_writer(data: bytes) -> Callable[[str], None]:
    """A ``write(path)`` that writes ``data`` with Python's file I/O, so a full disk is an ``OSError`` (``ENOSPC``)
    rather than a library's own error (``torch.save`` to a path reports one as a bare ``RuntimeError``)."""

    def write(path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(data)

    return write


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
    os.chmod(new, 0o777 & ~_umask())  # as mkdir would make it, not mkdtemp's owner-only
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


def describe_load_error(exc: BaseException) -> str:
    """One line about why ``torch.load(weights_only=True)`` refused or failed; never torch's advice to retry with
    ``weights_only`` off (which would run whatever the file's pickle asks for)."""
    text = str(exc)
    if "weights_only" in text or "Unpickl" in type(exc).__name__ or "safe_globals" in text:
        glob, op = re.search(r"GLOBAL ([\w.]+)", text), re.search(r"Unsupported operand \d+", text)
        named = f" (it names {glob.group(1)})" if glob else f" ({op.group(0)})" if op else ""
        return ("it holds Python objects other than tensors and plain containers, which are never unpickled"
                f"{named}")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no details'}"


def safe_torch_load(path: str | os.PathLike, *, error: type[Exception] = ConfigError) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only. A missing or unreadable
    file, or one whose pickle asks for anything else, raises ``error`` (a :class:`ConfigError` by default) with one
    line naming the file (:func:`describe_load_error`; the cause is not chained, so torch's advice never shows)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is missing")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols, asking to file an issue
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported the same way
        message = f"{path} is corrupted or unreadable: {describe_load_error(exc)}"
    raise error(message)


#: The environment variable that moves every cache of the package (downloads, encoded chorales, spoken words, clips).
CACHE_ENV = "PERCEIVERS_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The package's cache folder: ``cache_dir`` when given, else ``$PERCEIVERS_CACHE``, else
    ``$XDG_CACHE_HOME/perceivers``, else ``~/.cache/perceivers``. Nothing is created here."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "perceivers"
