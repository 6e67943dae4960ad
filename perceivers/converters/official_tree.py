"""Strict, declarative key tables from an official Haiku parameter tree to one of our state dicts.

Shared by the Perceiver AR (:mod:`perceivers.converters.perceiver_ar_official`) and HiP
(:mod:`perceivers.converters.hip_official`) converters. A tree is ``{haiku_module_path: {param: array}}``
(what ``hk.transform(...).init`` returns). Each :class:`Row` maps one Haiku parameter to one of our
keys through a named transform:

- ``copy``: same layout (LayerNorm ``scale``/``offset``, ``hk.Embed`` ``embeddings``, ``pos_embs``, biases);
- ``linear_w``: ``hk.Linear`` ``w [in, out]`` -> ``weight [out, in]`` (transpose).

Rows with a ``part`` index are pieces of one of our tensors, concatenated along the first axis in
``part`` order (Perceiver AR's per-axis position tables are one stacked parameter here).

:func:`check_tree` compares names *and* shapes before any tensor is converted and lists every missing,
unexpected and mis-shaped entry in one :class:`~perceivers.core.errors.ConfigError` (one line, for the
command line). Trees are read from a Haiku pickle (the restricted unpickler of
:mod:`perceivers.converters.haiku_pickle`) or from an ``.npz`` whose keys are ``module/param``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from perceivers.converters.haiku_pickle import load_haiku_pickle
from perceivers.core.errors import ConfigError

Tree = Mapping[str, Mapping[str, np.ndarray]]

TRANSFORMS = ("copy", "linear_w")


@dataclass(frozen=True)
class Row:
    """Haiku ``module``/``param`` -> our state-dict key ``ours`` through ``transform``."""

    module: str
    param: str
    ours: str
    transform: str = "copy"
    part: int | None = None


def linear_rows(module: str, ours: str, *, bias: bool = True) -> list[Row]:
    """``hk.Linear`` at ``module`` -> our ``nn.Linear`` at ``ours``."""
    rows = [Row(module, "w", f"{ours}.weight", "linear_w")]
    return rows + [Row(module, "b", f"{ours}.bias")] if bias else rows


def layer_norm_rows(module: str, ours: str) -> list[Row]:
    """``hk.LayerNorm`` (scale and offset) -> our ``nn.LayerNorm``."""
    return [Row(module, "scale", f"{ours}.weight"), Row(module, "offset", f"{ours}.bias")]


def read_tree(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """An official parameter tree from a Haiku pickle (restricted unpickler; ``{'params': ...}`` wrappers are
    unwrapped) or an ``.npz`` of ``module/param`` keys (read without pickle)."""
    path = Path(path)
    if path.suffix != ".npz":
        try:
            params, state = load_haiku_pickle(path)
        except ConfigError as exc:
            if "refusing to unpickle jax" not in str(exc) and "refusing to unpickle optax" not in str(exc):
                raise
            raise ConfigError(f"{exc} (a jaxline checkpoint.dill such as the released Perceiver AR copy task holds "
                              "JAX arrays and optax state: export its 'params' to an .npz of 'module/param' keys "
                              "first, see docs/checkpoints.md#official-perceiver-ar-and-hip-parameters)") from exc
        return {**params, **state}
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {str(path)!r} does not exist")
    tree: dict[str, dict[str, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                module, sep, param = key.rpartition("/")
                if not sep:
                    raise ConfigError(f"{path}: npz key {key!r} is not 'module/param'")
                tree.setdefault(module, {})[param] = data[key]
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path} is not a readable npz file of Haiku parameters: {exc}") from exc
    return tree


def _haiku_shape(row: Row, ours: tuple[int, ...]) -> tuple[int, ...]:
    return ours[::-1] if row.transform == "linear_w" else ours


def check_tree(tree: Tree, rows: list[Row], expected: Mapping[str, torch.Size], *, what: str) -> None:
    """Raise one ``ConfigError`` listing every table entry absent from ``tree``, every ``tree`` entry the table
    does not use and every shape that differs from ``expected`` (our key -> shape, e.g. a meta model's
    ``state_dict``). ``what`` names the tree in the message."""
    by_source = {(r.module, r.param): r for r in rows}
    missing = [f"{m}/{p}" for (m, p) in by_source if p not in tree.get(m, {})]
    unexpected = [f"{m}/{p}" for m, params in tree.items() for p in params if (m, p) not in by_source]
    parts: dict[str, list[Row]] = {}
    for r in rows:
        parts.setdefault(r.ours, []).append(r)
    uncovered = sorted(set(expected) - set(parts))
    if uncovered:  # a table bug, not a file problem
        raise RuntimeError(f"key table does not cover {uncovered}")
    shapes = []
    for ours, pieces in parts.items():
        want = tuple(expected[ours])
        present = [r for r in pieces if r.param in tree.get(r.module, {})]
        if len(present) != len(pieces):
            continue
        got = [tuple(np.shape(tree[r.module][r.param])) for r in present]
        if len(pieces) == 1:
            need = _haiku_shape(pieces[0], want)
            if got[0] != need:
                shapes.append(f"{pieces[0].module}/{pieces[0].param} {list(got[0])} (model: {list(need)})")
        elif sum(g[0] for g in got) != want[0] or any(g[1:] != want[1:] for g in got):
            shapes.append(f"{'+'.join(f'{r.module}/{r.param}' for r in present)} {[list(g) for g in got]} "
                          f"(model: {list(want)} in all)")
    if missing or unexpected or shapes:
        found = [f"{len(missing)} missing: {', '.join(sorted(missing))}" if missing else "",
                 f"{len(unexpected)} unexpected: {', '.join(sorted(unexpected))}" if unexpected else "",
                 f"{len(shapes)} mis-shaped: {'; '.join(shapes)}" if shapes else ""]
        raise ConfigError(f"{what} do not match the model; " + "; ".join(f for f in found if f))


def convert_tree(tree: Tree, rows: list[Row]) -> dict[str, Tensor]:
    """Apply the table (after :func:`check_tree`): our state dict, float32, contiguous."""
    pieces: dict[str, list[tuple[int, Tensor]]] = {}
    for r in rows:
        if r.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {r.transform!r}; known: {TRANSFORMS}")
        t = torch.from_numpy(np.array(tree[r.module][r.param], dtype=np.float32, copy=True))
        if r.transform == "linear_w":
            t = t.T
        pieces.setdefault(r.ours, []).append((r.part or 0, t.contiguous()))
    return {k: v[0][1] if len(v) == 1 else torch.cat([t for _, t in sorted(v, key=lambda x: x[0])])
            for k, v in pieces.items()}


def shape_of(tree: Tree, module: str, param: str, *, what: str) -> tuple[int, ...]:
    """Shape of one tree entry; a ``ConfigError`` naming it when absent (used to infer configurations)."""
    if param not in tree.get(module, {}):
        raise ConfigError(f"{what} have no {module}/{param}; cannot infer the configuration "
                          f"(modules found: {', '.join(sorted(tree)[:8])}{', ...' if len(tree) > 8 else ''})")
    return tuple(np.shape(tree[module][param]))


def haiku_suffix(index: int) -> str:
    """Haiku's name suffix of the ``index``-th module of one name in one scope: '', '_1', '_2', ..."""
    return "" if index == 0 else f"_{index}"


def count_modules(tree: Tree, prefix: str) -> int:
    """How many modules ``prefix``, ``prefix_1``, ... (each with sub-modules) the tree holds, counting up from 0."""
    n = 0
    while any(m == f"{prefix}{haiku_suffix(n)}" or m.startswith(f"{prefix}{haiku_suffix(n)}/") for m in tree):
        n += 1
    return n
