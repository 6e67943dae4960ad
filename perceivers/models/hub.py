"""Save and load models as Hugging Face-style folders: ``config.json`` + ``model.safetensors``.

``config.json`` is ``{"model_type": ..., "format_version": 1, "config": {...}}``. Loading never unpickles:
weights come from safetensors, the config from JSON. A folder is written as one unit
(:func:`perceivers.core.files.atomic_folder`): an interrupted save never leaves new weights beside an old config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceivers.core.files import (
    atomic_folder,
    interrupted_saves,
    json_writer,
    read_json_object,
)
from perceivers.core.registry import MODEL_TYPES

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Version of the folder layout this code writes; folders of a newer version are refused with a clear error.
FORMAT_VERSION = 1


def write_weights_folder(directory: str | os.PathLike, state: dict[str, torch.Tensor],
                         config: dict[str, Any]) -> Path:
    """Write ``state`` as ``model.safetensors`` (contiguous CPU tensors) and ``config`` as ``config.json`` into
    ``directory``, as one unit (:func:`~perceivers.core.files.atomic_folder`). Returns the folder."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return atomic_folder(directory, {
        WEIGHTS_NAME: lambda tmp: save_file(state, tmp, metadata={"format": "pt"}),
        CONFIG_NAME: json_writer(config),
    })


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write ``model`` (with ``config.to_dict()`` and ``model_type``) as ``config.json`` + ``model.safetensors``
    (float weights and buffers, contiguous, on the CPU). Returns the folder."""
    state = model.state_dict()
    if any(v.is_meta for v in state.values()):
        raise ValueError("cannot save a model whose parameters are on the meta device; materialise it first")
    config = {"model_type": model.model_type, "format_version": FORMAT_VERSION,  # type: ignore[attr-defined]
              "config": model.config.to_dict()}  # type: ignore[attr-defined]
    return write_weights_folder(save_directory, state, config)


def _missing_folder_error(directory: Path) -> FileNotFoundError:
    left = interrupted_saves(directory)
    if left:
        return FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist, but an interrupted save left "
                                 f"complete copies beside it: {', '.join(str(p) for p in left)} (rename one to "
                                 f"{directory.name!r} to use it)")
    return FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist")


def read_config(directory: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Read ``config.json``: ``(model_type, config dict)``; errors name the file and the problem. (Importing
    this module imports :mod:`perceivers.models`, which registers every model type.)"""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise _missing_folder_error(directory)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a checkpoint folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    data = read_json_object(path)
    if "model_type" not in data or not isinstance(data.get("config"), dict):
        raise ValueError(f"{path} must be an object with 'model_type' and 'config' keys")
    version = data.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: format_version={version!r} is invalid: expected an int >= 1")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}, newer than this perceivers reads "
                         f"({FORMAT_VERSION}); upgrade perceivers")
    model_type = data["model_type"]
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path}: unknown model_type {model_type!r}; known: {sorted(MODEL_TYPES)}")
    return model_type, data["config"]


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict`` that lists every missing, unexpected and mis-shaped key in one error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model:"]
        lines += [f"  missing key: {k}" for k in missing]
        lines += [f"  unexpected key: {k}" for k in unexpected]
        lines += [f"  shape mismatch: {m}" for m in mismatched]
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))


def from_pretrained(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by ``save_pretrained``; weights loaded strictly from safetensors, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_type, config_dict = read_config(directory)
    cls = MODEL_TYPES[model_type]
    config = cls.config_class.from_dict(config_dict)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: a checkpoint folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from exc
    # safetensors hands out tensors at arbitrary byte offsets; a misaligned weight can take another
    # BLAS path and differ from the saved model in the last bit. Give each tensor its own storage.
    state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    with torch.device("meta"):
        model = cls(config)
    load_state_dict_strict(model, state, source=str(weights))
    return model.eval()
