"""Save and load models as Hugging Face-style folders: ``config.json`` + ``model.safetensors``.

``config.json`` is ``{"model_type": ..., "format_version": 1, "config": {...}}``. Loading never unpickles:
weights come from safetensors, the config from JSON. A folder is written as one unit
(:func:`perceivers.core.files.atomic_folder`): an interrupted save never leaves new weights beside an old config.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.core.files import (
    atomic_folder,
    interrupted_saves,
    json_writer,
    read_json_object,
)
from perceivers.core.registry import MODEL_TYPES
from perceivers.core.validation import check_finite

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Version of the folder layout this code writes; folders of a newer version are refused with a clear error.
FORMAT_VERSION = 1


def write_weights_folder(directory: str | os.PathLike, state: dict[str, torch.Tensor],
                         config: dict[str, Any]) -> Path:
    """Write ``state`` as ``model.safetensors`` (contiguous CPU tensors) and ``config`` as ``config.json`` into
    ``directory``, as one unit (:func:`~perceivers.core.files.atomic_folder`). Returns the folder."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return atomic_folder(directory, {WEIGHTS_NAME: _safetensors_writer(state), CONFIG_NAME: json_writer(config)})


def _safetensors_writer(state: dict[str, torch.Tensor]):
    """A ``write(path)`` for :func:`atomic_folder` that saves ``state`` with safetensors and reads the header back:
    safetensors' writer does not report every failed write (a full disk can leave a short file without an error),
    so an incomplete file becomes an ``OSError`` here, before it could replace a good one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    def write(path: str) -> None:
        save_file(state, path, metadata={"format": "pt"})
        try:
            with safe_open(path, framework="pt") as fh:
                complete = set(fh.keys()) == set(state)
        except (SafetensorError, OSError, ValueError) as exc:
            complete, why = False, str(exc)
        else:
            why = "tensors are missing"
        if not complete:
            raise OSError(errno.EIO, f"the weights file came out incomplete ({why}; is the disk full?)", path)

    return write


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


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], *, source: str,
                           dtype: torch.dtype | None = None) -> None:
    """``load_state_dict`` that lists every missing, unexpected and mis-shaped key in one error. With ``dtype``,
    the tensors are first cast and checked by :func:`cast_state`."""
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
    if dtype is not None:
        state = cast_state(model, state, dtype, source=source)
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))


def _check_dtype_argument(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype):
        raise ConfigTypeError(f"dtype must be a floating-point torch.dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ConfigError(f"dtype={dtype} is not a floating-point dtype: expected torch.float32, torch.float64, "
                          "torch.bfloat16 or torch.float16")


def cast_state(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, *,
               source: str) -> dict[str, torch.Tensor]:
    """``state`` in the model's dtypes: every tensor the model holds as floating point becomes ``dtype`` (one dtype
    for the whole model, whatever the file mixes), the others (BatchNorm's step counter) keep the model's
    integer dtype. ``ConfigError`` naming the first tensor of the wrong kind (integer or bool where the model
    expects floats, or the reverse) and the first NaN or infinite value. Call after the keys are checked."""
    expected = model.state_dict()
    out = {}
    for key, tensor in state.items():
        want = expected[key].dtype
        if tensor.dtype.is_floating_point != want.is_floating_point or tensor.dtype == torch.bool:
            kind = "floating-point" if want.is_floating_point else "integer"
            raise ConfigError(f"{source} holds {key!r} as {tensor.dtype}: expected {kind} values")
        if want.is_floating_point:
            tensor = tensor.to(dtype)
            if not bool(torch.isfinite(tensor).all()):
                check_finite(f"{source}: {key}", tensor)
        out[key] = tensor.to(want) if not want.is_floating_point else tensor
    return out


def from_pretrained(directory: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild a model saved by ``save_pretrained``; weights loaded strictly from safetensors, in eval mode.

    Every floating-point parameter and buffer is cast to ``dtype`` (default ``torch.float32``), whatever dtype
    the file stores it in, so a file that mixes float16 and float32 tensors gives a model of one dtype. Integer
    or bool tensors where the model expects floats and NaN or infinite weights are a
    :class:`~perceivers.core.errors.ConfigError` naming the tensor (and the position of the first bad value).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_dtype_argument(dtype)
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
    load_state_dict_strict(model, state, source=str(weights), dtype=dtype)
    return model.to(dtype=dtype).eval()  # derived (non-persistent) float buffers too
