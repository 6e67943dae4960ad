"""Save and load models as Hugging Face-style folders: ``config.json`` + ``model.safetensors``.

Loading never unpickles: weights come from safetensors, the config from JSON. Both files are
written atomically (temporary file in the same folder, fsync, rename), so an interrupted save never
destroys an earlier good copy.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

_MODEL_TYPES: dict[str, tuple[type[nn.Module], type]] = {}


def register_model_type(name: str, config_cls: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: lets :func:`from_pretrained` rebuild models whose config.json says ``model_type=name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _MODEL_TYPES[name] = (cls, config_cls)
        cls.model_type = name  # type: ignore[attr-defined]
        return cls

    return wrap


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
    try:  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _write_json(data: dict[str, Any]) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")

    return write


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    atomic_write(path, _write_json(data))


class PretrainedMixin:
    """Adds ``save_pretrained(dir)`` and ``num_parameters()`` to a model with ``config`` (``to_dict``)
    and ``model_type``."""

    def num_parameters(self) -> int:
        """Every parameter, frozen ones included (the official counts); buffers such as BatchNorm
        running statistics are not parameters and are not counted."""
        return sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (float weights and buffers, contiguous) to the folder."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()  # type: ignore[attr-defined]
        if any(v.is_meta for v in state.values()):
            raise ValueError("cannot save a model whose parameters are on the meta device; materialise it first")
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        config = {"model_type": self.model_type, "format_version": FORMAT_VERSION,  # type: ignore[attr-defined]
                  "config": self.config.to_dict()}  # type: ignore[attr-defined]
        atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        write_json(out / CONFIG_NAME, config)
        return out


def read_json_object(path: Path) -> dict[str, Any]:
    """Parse a JSON file that must hold an object; ``ValueError`` naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_config(directory: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Read ``config.json``: ``(model_type, config dict)``; errors name the file and the problem."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a checkpoint folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    data = read_json_object(path)
    if "model_type" not in data or not isinstance(data.get("config"), dict):
        raise ValueError(f"{path} must be an object with 'model_type' and 'config' keys")
    from perceivers.registry import load_model_families

    load_model_families()  # every family registers its model type on import
    if data["model_type"] not in _MODEL_TYPES:
        raise ValueError(f"{path}: unknown model_type {data['model_type']!r}; known: {sorted(_MODEL_TYPES)}")
    return data["model_type"], data["config"]


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
    """Rebuild a model saved by ``save_pretrained``; weights loaded strictly from safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_type, config_dict = read_config(directory)
    cls, config_cls = _MODEL_TYPES[model_type]
    config = config_cls.from_dict(config_dict)
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
