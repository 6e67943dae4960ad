"""Models by Hugging Face Hub id or local folder, in our format or ``transformers``' (converted on the fly).

:func:`from_pretrained` (``perceivers.from_pretrained``) takes a local folder or a Hub id ``owner/name`` (optional
``@revision``: a branch, tag or commit). A Hub id is fetched with ``huggingface_hub`` (``pip install
'perceivers[hub]'``) into its usual cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``,
read when the call is made. With ``HF_HUB_OFFLINE=1`` nothing is downloaded and the id is served from that cache
(a missing one is one clear error). Only the files a model needs are fetched (``config.json``,
``model.safetensors``, or a legacy ``pytorch_model.bin`` read with ``torch.load(weights_only=True)``).

The folder's ``config.json`` decides the format: ours (``{"model_type", "format_version", "config"}``) loads with
:func:`perceivers.models.hub.from_pretrained` exactly as before; a ``transformers`` Perceiver (``"model_type":
"perceiver"``, one class in ``architectures``) goes through :func:`perceivers.converters.hf.convert_hf_folder`
(official semantics unless ``hf_compat``). An existing local path always wins over a Hub id of the same spelling.
A file path or a URL is an official Perceiver IO Haiku parameter file (``.pickle`` / ``.pystate``): it is converted
with :func:`perceivers.converters.haiku.convert_haiku_file` (a URL is downloaded once into the perceivers cache).
See docs/checkpoints.md, "Hub ids".
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from perceivers.converters.haiku import convert_haiku_file
from perceivers.converters.haiku_fetch import is_url
from perceivers.converters.hf import convert_hf_folder
from perceivers.core.errors import ConfigError
from perceivers.core.files import interrupted_saves, read_json_object
from perceivers.models.hub import CONFIG_NAME
from perceivers.models.hub import from_pretrained as load_folder

#: ``owner/name`` with an optional ``@revision``: the Hub's own character rules, one slash.
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})"
                    r"(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9_./-]{0,199}))?$")
#: Files a model folder may need; nothing else of a Hub repository is downloaded.
HUB_FILES = ["config.json", "model.safetensors", "pytorch_model.bin"]
_TRUE = {"1", "ON", "YES", "TRUE"}


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` if ``name`` is spelt like a Hub id (``owner/name[@revision]``), else None."""
    match = HUB_ID.match(name)
    if match is None or ".." in name:
        return None
    return match["repo"], match["revision"]


def hub_cache_dir() -> Path:
    """The Hub cache folder as ``huggingface_hub`` defines it, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to 1 / on / yes / true (read now, as well as at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_hub_folder(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub model ``repo_id`` at ``revision`` (default: main), downloaded into the Hub
    cache unless offline. ``ConfigError`` (one line) for a missing ``huggingface_hub``, an unknown or gated id, an
    unknown revision or, offline, an id that is not in the cache."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
        )
    except ImportError as exc:
        raise ConfigError(f"loading the Hub id {repo_id!r} needs huggingface_hub: pip install 'perceivers[hub]'") \
            from exc
    cache, offline = hub_cache_dir(), hub_offline()
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                 allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError as exc:
        if offline:
            raise ConfigError(f"Hub model {where!r} is not in the local Hub cache {cache} and HF_HUB_OFFLINE=1 "
                              "forbids downloading it (download it once online, or set HF_HUB_CACHE / HF_HOME "
                              "to the cache that holds it)") from exc
        raise ConfigError(f"Hub model {where!r} could not be downloaded and is not in the local Hub cache {cache}: "
                          f"{_first_line(exc)}") from exc
    except HFValidationError as exc:
        raise ConfigError(f"{where!r} is not a valid Hub id: {_first_line(exc)}") from exc
    except (HfHubHTTPError, OSError) as exc:  # unknown / gated repository or revision, network failure
        raise ConfigError(f"Hub model {where!r} could not be fetched: {_first_line(exc)}") from exc
    return Path(path)


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)


def folder_format(directory: str | os.PathLike) -> str:
    """``'transformers'`` if the model folder's config.json is a ``transformers`` Perceiver config (``model_type``
    ``'perceiver'`` and no ``config`` object), else ``'perceivers'`` (our loader then reports any other problem)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return "perceivers"
    data = read_json_object(path)
    return "transformers" if data.get("model_type") == "perceiver" and "config" not in data else "perceivers"


def resolve_model_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as given, or the Hub snapshot of a Hub id (see the module docstring). A path that does not
    exist and is not spelt like a Hub id keeps the local loader's error."""
    path = Path(name_or_path)
    text = os.fspath(name_or_path)
    parsed = None if path.exists() or interrupted_saves(path) else parse_hub_id(text)
    if parsed is None:
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to Hub ids; {text!r} is a local path")
        return path
    repo_id, at = parsed
    if at is not None and revision is not None and at != revision:
        raise ConfigError(f"{text!r} names revision {at!r} but revision={revision!r} was also given")
    try:
        return fetch_hub_folder(repo_id, at or revision)
    except ConfigError as exc:
        raise ConfigError(f"no local folder {text!r}, and {exc}") from exc


def from_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, hf_compat: bool = False,
                    undo_hf_kernel_transpose: bool = False) -> nn.Module:
    """A model (eval mode, on ``device``, floating tensors in ``dtype``) from a local folder or a Hub id, in our
    format or ``transformers``' (see the module docstring). ``hf_compat`` / ``undo_hf_kernel_transpose`` apply to
    ``transformers`` folders (:func:`~perceivers.converters.hf.convert_hf_folder`)."""
    if is_url(name_or_path) or Path(name_or_path).is_file():  # an official Perceiver IO parameter file
        if revision is not None or hf_compat or undo_hf_kernel_transpose:
            raise ConfigError(f"revision / hf_compat / undo_hf_kernel_transpose apply to model folders and Hub ids; "
                              f"{os.fspath(name_or_path)!r} is a parameter file")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConfigError(f"dtype={dtype!r} is invalid: expected a floating torch.dtype such as torch.float32")
        return convert_haiku_file(name_or_path).to(device=device, dtype=dtype)
    folder = resolve_model_folder(name_or_path, revision)
    if not folder.is_dir() or folder_format(folder) == "perceivers":
        if hf_compat or undo_hf_kernel_transpose:
            raise ConfigError(f"hf_compat / undo_hf_kernel_transpose apply to transformers folders; {folder} is a "
                              "perceivers folder")
        return load_folder(folder, device=device, dtype=dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype={dtype!r} is invalid: expected a floating torch.dtype such as torch.float32")
    model = convert_hf_folder(folder, hf_compat=hf_compat, undo_hf_kernel_transpose=undo_hf_kernel_transpose)
    return model.to(device=device, dtype=dtype)
