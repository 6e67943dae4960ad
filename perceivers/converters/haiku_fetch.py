"""Official parameter files given as a URL: downloaded once into a cache folder, then read like a path.

``resolve_source("https://storage.googleapis.com/perceiver_io/imagenet_conv_preprocessing.pystate")`` downloads
with :mod:`urllib` (any scheme it supports: ``https``, ``http``, ``ftp``, ``file``) into :func:`cache_dir`
(``$PERCEIVERS_CACHE``, else ``$XDG_CACHE_HOME/perceivers``, else ``~/.cache/perceivers``) under a name made of
a hash of the URL and its last path segment, written atomically (a partial download never appears under the
final name) with a progress bar on stderr; a later call finds the file there. A path is returned unchanged.
The file is then read by the restricted unpickler like any other (:mod:`perceivers.converters.haiku_pickle`).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from perceivers.core.errors import ConfigError
from perceivers.core.files import atomic_write, cache_root

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_CHUNK = 1 << 20


def is_url(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and bool(_URL.match(source))


def cache_dir() -> Path:
    """Where downloads are kept: ``$PERCEIVERS_CACHE``, ``$XDG_CACHE_HOME/perceivers`` or ``~/.cache/perceivers``."""
    return cache_root()


def cached_path(url: str, folder: str | os.PathLike | None = None) -> Path:
    """The cache file of ``url``: ``<sha256(url)[:16]>-<last path segment>``."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(folder if folder is not None else cache_dir()) / f"{digest}-{name}"


def download(url: str, path: Path, *, progress: bool = True) -> None:
    """Copy ``url`` to ``path`` atomically, with a tqdm progress bar on stderr unless ``progress`` is False."""
    from tqdm import tqdm

    def write(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                      desc=f"downloading {path.name.split('-', 1)[-1]}", disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, write)
    except (urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"cannot download {url}: {reason}") from None


def resolve_source(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> Path:
    """A local path for ``source``: a path unchanged, a URL downloaded into the cache (once)."""
    if not is_url(source):
        return Path(source)
    path = cached_path(str(source), cache_dir)
    if not path.is_file():
        download(str(source), path, progress=progress)
    return path

