"""Official DeepMind Haiku parameter files -> ``perceivers`` models.

The official files are pickles of ``{module_path: {param_name: array}}`` (``FlatMapping`` under Haiku 0.0.4;
ImageNet ``.pystate`` files wrap them as ``{'params': ..., 'state': ...}``). They are read by the restricted
unpickler of :mod:`perceivers.converters.haiku_pickle` (plain dicts and numeric arrays, every protocol, no array
larger than its bytes); a URL is downloaded first (:mod:`perceivers.converters.haiku_fetch`). The configuration
is read from the tree (:mod:`perceivers.converters.haiku_infer`) unless a registered model is named.

The key table (:mod:`perceivers.converters.haiku_tables`) maps a Haiku *module* to one of ours with a kind that
fixes the parameter names and the tensor transform:

- ``linear``: ``w [in, out]`` -> ``weight [out, in]`` (transpose), ``b`` -> ``bias``;
- ``layer_norm`` / ``batchnorm``: ``scale``/``offset`` (squeezed from ``[1, 1, 1, C]``) -> ``weight``/``bias``;
- ``conv``: ``w`` HWIO -> OIHW with the permutation ``(3, 2, 0, 1)`` (HF's converter reverses all
  axes instead, which transposes the kernel spatially), ``b`` -> ``bias``;
- ``table``: ``pos_embs [N, C]`` unchanged;
- ``ema``: BatchNorm ``mean_ema``/``var_ema`` ``average`` -> ``running_mean``/``running_var``.

Every missing, unexpected and mis-shaped entry is listed in one error, with what the file holds and what the
model expects (:func:`check_tree`), before any tensor is converted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from perceivers.converters.haiku_fetch import resolve_source
from perceivers.converters.haiku_infer import (
    describe_config,
    describe_tree,
    guess_model_name,
    infer_overrides,
)
from perceivers.converters.haiku_pickle import RefusedClassError, load_haiku_pickle
from perceivers.converters.haiku_tables import (
    ModuleRow,
    classification_decoder_rows,
    config_kind,
    cross_attention_rows,
    encoder_rows,
    flow_rows,
    haiku_suffix,
    image_preprocessor_rows,
    language_mlm_rows,
    model_rows,
    multimodal_rows,
    self_attention_rows,
)
from perceivers.core.errors import ConfigError
from perceivers.models.hub import load_state_dict_strict
from perceivers.models.registry import get_config, get_entry

__all__ = ["KIND_PARAMS", "RefusedClassError", "check_tree", "classification_decoder_rows", "convert_haiku_file",
           "convert_tree", "cross_attention_rows", "encoder_rows", "flow_rows", "guess_model_name", "haiku_suffix",
           "image_preprocessor_rows", "language_mlm_rows", "load_haiku_pickle", "load_into", "model_rows",
           "multimodal_rows", "official_shape", "self_attention_rows", "transform"]

#: Kind -> {official parameter name: our parameter suffix ('' for a table row naming the tensor itself)}.
KIND_PARAMS: dict[str, dict[str, str]] = {
    "linear": {"w": "weight", "b": "bias"}, "conv": {"w": "weight", "b": "bias"},
    "layer_norm": {"scale": "weight", "offset": "bias"}, "batchnorm": {"scale": "weight", "offset": "bias"},
    "table": {"pos_embs": ""}, "ema": {"average": ""}, "embed": {"embeddings": ""}, "bias": {"bias": ""},
}
_KIND_PARAMS = KIND_PARAMS  # the name tests/testkit/models.py reads
#: Official parameters with no counterpart here (BatchNorm EMA internals).
IGNORED_PARAMS = {"ema": {"hidden", "counter"}}


def official_shape(kind: str, param: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an official parameter of ``kind`` has for our tensor of shape ``ours``."""
    if kind == "linear" and param == "w":
        return ours[::-1]
    if kind == "conv" and param == "w" and len(ours) == 4:
        o, i, h, w = ours
        return (h, w, i, o)
    return ours


def _shape_fits(kind: str, param: str, got: tuple[int, ...], ours: tuple[int, ...]) -> bool:
    if kind in ("batchnorm", "ema"):  # [1, 1, 1, C] or [C]
        return len(ours) == 1 and int(np.prod(got)) == ours[0] and max(got, default=1) == ours[0]
    return got == official_shape(kind, param, ours)


def tree_mismatches(tree: Mapping[str, Mapping[str, Any]], rows: list[ModuleRow],
                    shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, mis-shaped)`` entries of an official tree against a module table and our
    state-dict shapes, every one of them."""
    table = {hk: (ours, kind) for hk, ours, kind in rows}
    missing, unexpected, misshaped = [], [], []
    for module, (ours, kind) in table.items():
        if module not in tree:
            missing.append(module)
            continue
        params = tree[module]
        for param, suffix in KIND_PARAMS[kind].items():
            key = f"{ours}.{suffix}" if suffix else ours
            if key not in shapes:
                continue  # e.g. a conv without bias: a `b` in the file is reported as unexpected below
            if param not in params:
                missing.append(f"{module}/{param}")
            elif not _shape_fits(kind, param, got := tuple(np.shape(params[param])), shapes[key]):
                want = official_shape(kind, param, shapes[key])
                misshaped.append(f"{module}/{param} {list(got)} (expected {list(want)})")
        known = {p for p, s in KIND_PARAMS[kind].items() if (f"{ours}.{s}" if s else ours) in shapes}
        unexpected += [f"{module}/{p}" for p in params if p not in known and p not in IGNORED_PARAMS.get(kind, ())]
    unexpected += [f"{module}/{p}" for module, params in tree.items() if module not in table for p in params]
    return missing, sorted(unexpected), misshaped


_LAYER = re.compile(r"^(?P<prefix>.*?/self_attention)(?:_(?P<i>\d+))?(?P<rest>/.*)$")


def compact(entries: list[str]) -> list[str]:
    """Entries with whole self-attention layers folded: ``.../self_attention_12..25/* (14 layers x 8 entries)``."""
    layers: dict[tuple[str, int], list[str]] = {}
    out = []
    for e in entries:
        m = _LAYER.match(e)
        if m is None:
            out.append(e)
        else:
            layers.setdefault((m["prefix"], int(m["i"] or 0)), []).append(m["rest"])
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for (prefix, i), rests in layers.items():
        groups.setdefault((prefix, tuple(sorted(rests))), []).append(i)
    for (prefix, rests), idx in groups.items():
        if len(idx) == 1:
            out += [f"{prefix}{haiku_suffix(idx[0])}{r}" for r in rests]
        else:
            parent, layer = prefix.rsplit("/", 1)
            names = ", ".join(f"{layer}{haiku_suffix(a)}" + (f" .. {layer}{haiku_suffix(b)}" if b > a else "")
                              for a, b in _runs(sorted(idx)))
            out.append(f"{parent}/{{{names}}}/* ({len(idx)} layers x {len(rests)} entries: "
                       f"{', '.join(r.lstrip('/') for r in rests)})")
    return out


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted ints as ``(first, last)`` runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def check_tree(tree: Mapping[str, Mapping[str, Any]], rows: list[ModuleRow], model: torch.nn.Module, *,
               source: str, target: str) -> None:
    """:class:`ConfigError` listing every missing, unexpected and mis-shaped entry at once, saying what the file
    holds and what ``target`` (the model named or inferred) expects."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected, misshaped = tree_mismatches(tree, rows, shapes)
    if not (missing or unexpected or misshaped):
        return
    parts = [f"{len(missing)} missing: {'; '.join(compact(missing))}" if missing else "",
             f"{len(unexpected)} unexpected: {'; '.join(compact(unexpected))}" if unexpected else "",
             f"{len(misshaped)} mis-shaped: {'; '.join(misshaped)}" if misshaped else ""]
    expects = describe_config(model.config, config_kind(model.config))
    raise ConfigError(f"{source}: the Haiku parameters do not fit {target}: this file holds {describe_tree(tree)}; "
                      f"{target} expects {expects}. " + ". ".join(p for p in parts if p))


def transform(kind: str, param: str, array: np.ndarray) -> Tensor:
    """One official array -> our tensor (float32), per the kind's transform."""
    t = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    if kind == "linear" and param == "w":
        return t.T.contiguous()
    if kind == "conv" and param == "w":
        return t.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    if kind in ("batchnorm", "ema"):
        return t.reshape(-1)
    return t



def convert_tree(tree: Mapping[str, Mapping[str, np.ndarray]], rows: list[ModuleRow],
                 model: torch.nn.Module | None = None, *, source: str = "Haiku tree",
                 target: str = "the model") -> dict[str, Tensor]:
    """Apply the module table to a two-level Haiku tree; with ``model``, check every name and shape first
    (:func:`check_tree`), otherwise the names only (missing modules and unexpected entries, all at once)."""
    if model is not None:
        check_tree(tree, rows, model, source=source, target=target)
    table = {hk: (ours, kind) for hk, ours, kind in rows}
    missing = sorted(hk for hk in table if hk not in tree)
    unexpected = sorted(f"{m}/{p}" for m, params in tree.items() for p in params
                        if m not in table or (p not in KIND_PARAMS[table[m][1]]
                                              and p not in IGNORED_PARAMS.get(table[m][1], ())))
    if missing or unexpected:
        raise ConfigError(f"{source}: the Haiku parameters do not fit {target}: "
                          + "; ".join([f"missing module: {k}" for k in missing] + [f"unexpected: {k}"
                                                                                  for k in unexpected]))
    out: dict[str, Tensor] = {}
    for module, params in tree.items():
        ours, kind = table[module]
        for param, array in params.items():
            suffix = KIND_PARAMS[kind].get(param)
            if suffix is not None:
                out[f"{ours}.{suffix}" if suffix else ours] = transform(kind, param, array)
    return out


def load_into(model: torch.nn.Module, converted: dict[str, Tensor], *, source: str) -> None:
    """Strictly load converted tensors. Buffers without an official counterpart (BatchNorm
    ``num_batches_tracked``) get a real zero counter, also on a model built on the meta device (which
    ``save_pretrained`` could not write)."""
    state = dict(converted)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=value.dtype)
    load_state_dict_strict(model, state, source=source)


def read_tree(params: str | Path, state: str | Path | None = None, *,
              cache_dir: str | Path | None = None) -> tuple[dict, dict]:
    """``(params, state)`` of an official file (path or URL), with a separate state file's tree merged in (its
    ``state`` if it wraps ``{'params', 'state'}``, else the whole tree)."""
    p, s = load_haiku_pickle(resolve_source(params, cache_dir=cache_dir))
    if state is not None:
        extra_params, extra_state = load_haiku_pickle(resolve_source(state, cache_dir=cache_dir))
        extra = extra_state or extra_params
        overlap = sorted(set(extra) & (set(p) | set(s)))
        if overlap:
            raise ConfigError(f"--state {state}: modules already in {params}: {', '.join(overlap)}")
        s = {**s, **extra}
    return p, s


def merge_overrides(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` applied, nested dicts merged key by key (``extra`` wins; a dict over a config
    object, such as an inferred modality, replaces those fields of it)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_overrides(dict(out[key]), value)
        elif isinstance(value, Mapping) and hasattr(out.get(key), "replace"):  # a config inferred whole
            out[key] = out[key].replace(**value)
        else:
            out[key] = value
    return out


def convert_haiku_file(path: str | Path, model_name: str | None = None, *, state: str | Path | None = None,
                       cache_dir: str | Path | None = None, **overrides: Any) -> torch.nn.Module:
    """Build the model an official parameter file (path or URL) holds and load its weights and BatchNorm
    statistics (from the file's ``state`` or a separate ``state`` file) strictly. Returns it in eval mode.

    Without ``model_name`` the kind and every size the tree fixes are read from it (heads and blocks keep the
    registered defaults); ``overrides`` (``create_model`` style, nested dicts) apply on top either way."""
    params, st = read_tree(path, state, cache_dir=cache_dir)
    if model_name is None:
        name = guess_model_name(params)
        target = f"the inferred {name} configuration"
        try:
            inferred = infer_overrides(params, name)
        except ConfigError as exc:  # a damaged tree: list every problem against the released size instead
            inferred, target = {}, f"the released {name} (the sizes cannot be read: {exc})"
        overrides = merge_overrides(inferred, overrides)
    else:
        name, target = model_name, f"--model {model_name}"
    entry = get_entry(name)
    try:
        config = get_config(name, **overrides)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: {target}: {exc} (the number of heads and blocks is not stored in the file: "
                          f"set them with --heads / --set encoder.num_blocks=N)") from None
    with torch.device("meta"):
        model = entry.model_cls(config)
    rows = model_rows(config)
    tree = {**params, **st}
    converted = convert_tree(tree, rows, model, source=str(path), target=target)
    load_into(model, converted, source=str(path))
    return model.eval()
