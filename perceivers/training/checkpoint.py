"""Training checkpoints: everything needed to continue a run bit for bit.

Layout of ``RUN/checkpoints/step-00000120/``:

- ``model.safetensors`` + ``optimizer.pt`` (one process or DDP: written by rank 0), or ``dcp/`` (FSDP: sharded,
  every rank writes its shards through ``torch.distributed.checkpoint``);
- ``rng-rank{r}.pt`` per rank: torch (CPU and CUDA), numpy and Python RNG states;
- ``meta.json``: step, world size, strategy, progress counters; written last.

A checkpoint is assembled in a hidden ``.tmp-step-*`` folder (files fsynced) and renamed into place, so a process
killed while saving leaves the previous checkpoints intact; a save that fails (disk full, read-only folder) removes
its hidden folder and raises a one-line :class:`~perceivers.core.files.FileSystemError` naming the file. Loading never
unpickles arbitrary objects: safetensors for weights, ``torch.load(weights_only=True)`` for the rest
(:func:`~perceivers.core.files.safe_torch_load`), and every file is checked for the structure the engine wrote
(``meta.json``'s fields, the RNG states, the optimiser's groups and state shapes) before it is used: a tampered or
foreign file is a :class:`CheckpointError` naming it, never a traceback from deep inside torch.
"""

from __future__ import annotations

import io
import math
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
from perceivers.core.files import (
    atomic_write,
    bytes_writer,
    fsync_dir,
    read_json_object,
    reported_os_errors,
    safe_torch_load,
    write_json,
)

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


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _write(path: Path, writer) -> None:
    with reported_os_errors("write", path):
        atomic_write(path, writer)


def save_checkpoint(root: Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str,
                    ctx, meta: dict[str, Any], keep_last: int) -> Path:
    """Collective: write the checkpoint of ``step`` (see the module docstring) and keep the last ``keep_last``.

    ``model`` is the unwrapped module (DDP's ``.module``), or the ``fully_shard``-ed model for FSDP. An ``OSError``
    (disk full, read-only) is a :class:`~perceivers.core.files.FileSystemError`; the checkpoints already written stay.
    """
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    try:
        with reported_os_errors("write checkpoint", tmp):
            _save_into(tmp, model=model, optimizer=optimizer, strategy=strategy, ctx=ctx)
            if ctx.is_main:
                write_json(tmp / "meta.json", {"format_version": FORMAT_VERSION, "step": step, "strategy": strategy,
                                               "world_size": ctx.world_size, **meta})
                fsync_dir(tmp)
                _replace(tmp, final)
                fsync_dir(root)
    except BaseException:  # a failed save (not a kill): free the space its files took
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if ctx.is_main:
        for old in step_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return final


def _save_into(tmp: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str, ctx) -> None:
    """Collective: every file of a checkpoint but ``meta.json`` into the fresh folder ``tmp``."""
    root = tmp.parent
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
        from safetensors.torch import save

        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        # serialised in memory, written with Python's I/O: a full disk is ENOSPC, not a library's own error
        _write(tmp / "model.safetensors", bytes_writer(save(weights, metadata={"format": "pt"})))
        _write(tmp / "optimizer.pt", bytes_writer(_torch_bytes(optimizer.state_dict())))
    _write(tmp / f"rng-rank{ctx.rank}.pt", bytes_writer(_torch_bytes(rng_state(ctx.device))))
    ctx.barrier()


def _replace(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final``; the same step saved again (e.g. after a resume) replaces it."""
    if final.exists():
        old = final.parent / f".old-{final.name}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


#: meta.json fields the engine reads back: name -> (allowed types, what a good value is, check)
_META_FIELDS: dict[str, tuple[tuple[type, ...], str, Any]] = {
    "step": ((int,), "an integer >= 0", lambda v: v >= 0),
    "world_size": ((int,), "an integer >= 1", lambda v: v >= 1),
    "strategy": ((str,), "a strategy name", lambda v: True),
    "final": ((bool,), "true or false", lambda v: True),
    "total_steps": ((int,), "an integer >= 0", lambda v: v >= 0),
    "skipped": ((int,), "an integer >= 0", lambda v: v >= 0),
    "examples": ((int,), "an integer >= 0", lambda v: v >= 0),
    "train_seconds": ((int, float), "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "train_loss": ((int, float, type(None)), "a number or null", lambda v: True),
    "config": ((dict,), "an object", lambda v: True),
    "task": ((dict,), "an object", lambda v: True),
}
_REQUIRED_META = ("step", "world_size", "strategy")


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint folder, its fields checked; :class:`CheckpointError` naming the file otherwise."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {str(path)!r} does not exist")
    file = path / "meta.json"
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {path} is not a complete checkpoint")
    try:
        meta = read_json_object(file)
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{file} is corrupted: {exc}") from None
    if meta.get("format_version") != FORMAT_VERSION or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{file} is not an engine checkpoint (needs an integer 'step' and format_version "
                              f"{FORMAT_VERSION})")
    for key in _REQUIRED_META:
        if key not in meta:
            raise CheckpointError(f"{file} is corrupted: it lacks {key!r}")
    for key, (types, expected, ok) in _META_FIELDS.items():
        if key not in meta:
            continue
        value = meta[key]
        wrong_type = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong_type or not ok(value):
            raise CheckpointError(f"{file} is corrupted: {key!r} is {value!r}, expected {expected}")
    return meta


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters (torch's messages span lines)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _load_pickle(file: Path) -> Any:
    return safe_torch_load(file, error=CheckpointError)


def _check_rng_state(state: Any, file: Path) -> None:
    """The structure :func:`rng_state` writes, or :class:`CheckpointError` naming ``file``."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file} does not hold this engine's RNG states: {what}")

    if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= set(state):
        raise bad("expected a dict with 'torch', 'numpy' and 'python'")
    tensor = state["torch"]
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.shape != torch.get_rng_state().shape:
        raise bad("'torch' is not a torch generator state")
    n, py = state["numpy"], state["python"]
    if not (isinstance(n, dict) and n.get("kind") == "MT19937" and isinstance(n.get("keys"), torch.Tensor)
            and n["keys"].shape == (624,) and not n["keys"].is_floating_point()
            and all(isinstance(n.get(k), int) and not isinstance(n.get(k), bool) for k in ("pos", "has_gauss"))
            and 0 <= n["pos"] <= 624 and isinstance(n.get("gauss"), float)):
        raise bad("'numpy' is not a numpy MT19937 state")
    if not (isinstance(py, dict) and py.get("version") == 3 and isinstance(py.get("state"), torch.Tensor)
            and py["state"].shape == (625,) and not py["state"].is_floating_point()
            and (py.get("gauss") is None or isinstance(py.get("gauss"), float))):
        raise bad("'python' is not a Python random state")
    if "cuda" in state and not isinstance(state["cuda"], torch.Tensor):
        raise bad("'cuda' is not a generator state")
    try:  # the values themselves (e.g. an MT19937 key out of range): Python and numpy check them
        random.Random().setstate((3, tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        np.random.RandomState().set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                                           n["gauss"]))
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad(str(exc)) from None


def _check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, file: Path) -> None:
    """``saved`` fits ``optimizer`` (same kind, groups, parameter counts and state shapes), or
    :class:`CheckpointError` naming ``file``."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file} does not match the optimizer ({type(optimizer).__name__}): {what}")

    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)):
        raise bad("expected an optimizer state dict ('state' and 'param_groups')")
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups) or not all(isinstance(g, dict) for g in groups):
        raise bad(f"{len(groups)} parameter groups, expected {len(optimizer.param_groups)}")
    for i, (old, new) in enumerate(zip(groups, optimizer.param_groups)):
        if set(old) != set(new):
            raise bad(f"group {i} has the settings {sorted(old)}: written by another optimizer")
        if not isinstance(old["params"], list) or len(old["params"]) != len(new["params"]):
            raise bad(f"group {i} lists {old['params']!r:.40}, expected {len(new['params'])} parameter ids")
        for pid, param in zip(old["params"], new["params"]):
            state = saved["state"].get(pid, {})
            if not isinstance(state, dict):
                raise bad(f"the state of parameter {pid!r} is a {type(state).__name__}")
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                    raise bad(f"state {key!r} of parameter {pid} has shape {tuple(value.shape)}, "
                              f"expected {tuple(param.shape)}")
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not (number or isinstance(value, torch.Tensor) and (value.is_floating_point() or key == "step")):
                    raise bad(f"state {key!r} of parameter {pid} is a {type(value).__name__}, expected a float tensor")


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, strategy: str,
                    ctx) -> dict[str, Any]:
    """Collective: restore model, optimizer and this rank's RNG states from ``path``; returns ``meta.json``. The
    optimiser's hyper-parameters (betas, eps, weight decay) stay this run's: the checkpoint gives only its state."""
    meta = read_meta(path)
    settings_now = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
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
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported alike
            raise CheckpointError(f"{path / 'dcp'} is missing or corrupted: {_one_line(exc)}") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        from safetensors.torch import load_file

        file = path / "model.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{file} is missing from the checkpoint")
        try:
            weights = load_file(file)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported alike
            raise CheckpointError(f"{file} is corrupted or unreadable: {_one_line(exc)}") from None
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{file} does not match the model: {_one_line(exc)}") from None
        optim = _load_pickle(path / "optimizer.pt")
        _check_optimizer_state(optim, optimizer, path / "optimizer.pt")
        try:
            optimizer.load_state_dict(optim)
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{path / 'optimizer.pt'} does not match the optimizer: {_one_line(exc)}") from None
    for group, settings in zip(optimizer.param_groups, settings_now):  # this run's lr, betas, eps, weight decay
        group.update(settings)
    rng_file = path / f"rng-rank{ctx.rank}.pt"
    rng = _load_pickle(rng_file)
    _check_rng_state(rng, rng_file)
    set_rng_state(rng, ctx.device)
    return meta
