"""Training checkpoints: everything needed to continue a run bit for bit.

Layout of ``RUN/checkpoints/step-00000120/``:

- ``model.safetensors`` + ``optimizer.pt`` (one process or DDP: written by rank 0), or ``dcp/`` (FSDP: sharded,
  every rank writes its shards through ``torch.distributed.checkpoint``);
- ``rng-rank{r}.pt`` per rank: torch (CPU and CUDA), numpy and Python RNG states;
- ``meta.json``: step, world size, strategy, progress counters; written last.

A checkpoint is assembled in a hidden ``.tmp-step-*`` folder (files fsynced) and renamed into place, so a process
killed while saving leaves the previous checkpoints intact. Loading never unpickles arbitrary objects:
safetensors for weights, ``torch.load(weights_only=True)`` for the rest.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from perceivers.core.errors import ConfigError
from perceivers.core.files import atomic_write, fsync_dir, read_json_object, write_json

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(ConfigError):
    """A checkpoint is missing, incomplete or unreadable; the message names the file and the problem. A
    :class:`~perceivers.core.errors.ConfigError` (so a ``ValueError`` and a
    :class:`~perceivers.core.errors.UserError`): the checkpoint is the user's input (``--resume``)."""


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states of this process as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def step_dirs(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root`` (they hold ``meta.json``), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(root: Path) -> Path | None:
    dirs = step_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(root: Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str,
                    ctx, meta: dict[str, Any], keep_last: int) -> Path:
    """Collective: write the checkpoint of ``step`` (see the module docstring) and keep the last ``keep_last``.

    ``model`` is the unwrapped module (DDP's ``.module``), or the ``fully_shard``-ed model for FSDP.
    """
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    ctx.barrier()
    if strategy == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "dcp"))
    elif ctx.is_main:
        from safetensors.torch import save_file

        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        atomic_write(tmp / "model.safetensors", lambda p: save_file(weights, p, metadata={"format": "pt"}))
        atomic_write(tmp / "optimizer.pt", lambda p: torch.save(optimizer.state_dict(), p))
    rng = rng_state(ctx.device)
    atomic_write(tmp / f"rng-rank{ctx.rank}.pt", lambda p: torch.save(rng, p))
    ctx.barrier()
    if ctx.is_main:
        write_json(tmp / "meta.json", {"format_version": FORMAT_VERSION, "step": step, "strategy": strategy,
                                       "world_size": ctx.world_size, **meta})
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            old = root / f".old-step-{step:08d}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
        for old in step_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return final


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint folder; :class:`CheckpointError` naming the file otherwise."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {str(path)!r} does not exist")
    file = path / "meta.json"
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {path} is not a complete checkpoint")
    try:
        meta = read_json_object(file)
    except ValueError as exc:
        raise CheckpointError(f"{file} is corrupted: {exc}") from exc
    if not isinstance(meta.get("step"), int) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{file} is not an engine checkpoint (needs an integer 'step' and format_version "
                              f"{FORMAT_VERSION})")
    return meta


def _torch_load(file: Path) -> Any:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing from the checkpoint")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{file} is corrupted or unreadable: {type(exc).__name__}: {exc}") from exc


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str,
                    ctx) -> dict[str, Any]:
    """Collective: restore model, optimizer and this rank's RNG states from ``path``; returns ``meta.json``."""
    meta = read_meta(path)
    saved_fsdp, now_fsdp = meta.get("strategy") == "fsdp", strategy == "fsdp"
    if saved_fsdp != now_fsdp or meta.get("world_size") != ctx.world_size:
        raise CheckpointError(f"{path / 'meta.json'}: written by {meta.get('world_size')} process(es) with strategy "
                              f"{meta.get('strategy')!r}; resume with the same number of processes and "
                              f"{'fsdp' if saved_fsdp else 'none or ddp'} (got {ctx.world_size}, {strategy!r})")
    if now_fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_state_dict,
            set_state_dict,
        )

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        try:
            dcp.load(state, checkpoint_id=str(path / "dcp"))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path / 'dcp'} is missing or corrupted: {type(exc).__name__}: {exc}") from exc
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        from safetensors.torch import load_file

        file = path / "model.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{file} is missing from the checkpoint")
        try:
            weights = load_file(file)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{file} is corrupted or unreadable: {type(exc).__name__}: {exc}") from exc
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{file} does not match the model: {exc}") from exc
        optim = _torch_load(path / "optimizer.pt")
        try:
            optimizer.load_state_dict(optim)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path / 'optimizer.pt'} does not match the optimizer: {exc}") from exc
    set_rng_state(_torch_load(path / f"rng-rank{ctx.rank}.pt"), ctx.device)
    return meta
