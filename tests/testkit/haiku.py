"""Official-format Haiku trees of a model's own weights, for the converter tests.

The layouts are written out here from the official code, not taken from the converter's transforms: Linear
``w [in, out]``, conv ``w`` HWIO, LayerNorm ``scale``/``offset [C]``, BatchNorm ``scale``/``offset [1, 1, 1, C]``,
its statistics in the *state* tree as ``mean_ema``/``var_ema`` with ``average``/``hidden [1, 1, 1, C]`` and an
int32 ``counter``; tables ``pos_embs [N, C]``. The module names come from the converter's tables (the
released-size tests check those names against lists written out from the colabs).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

_PARAMS = {"linear": ("w", "b"), "conv": ("w", "b"), "layer_norm": ("scale", "offset"),
           "batchnorm": ("scale", "offset"), "table": ("pos_embs",), "ema": ("average",), "embed": ("embeddings",),
           "bias": ("bias",)}
_SUFFIX = {"w": "weight", "b": "bias", "scale": "weight", "offset": "bias"}


def official_layout(kind: str, param: str, t: torch.Tensor) -> np.ndarray:
    """Our tensor in the official layout; for a tensor on the meta device a read-only array of 0.01 of the official
    shape that takes no memory (``np.broadcast_to``; pickling writes it out in full)."""
    a = np.broadcast_to(np.float32(0.01), tuple(t.shape)) if t.is_meta else t.detach().numpy()
    if kind == "linear" and param == "w":
        a = a.T  # [out, in] -> [in, out]
    elif kind == "conv" and param == "w":
        a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif kind in ("batchnorm", "ema"):
        a = a.reshape(1, 1, 1, -1)
    return a if t.is_meta else a.copy()


def haiku_trees(model: torch.nn.Module) -> tuple[dict, dict]:
    """``(params, state)``: ``model``'s weights under the official names and layouts; the state holds the
    BatchNorm statistics (empty for models without BatchNorm). A model on the meta device gives 0.01 everywhere
    (released sizes without building the weights)."""
    from perceivers.converters.haiku_tables import model_rows

    state_dict = model.state_dict()
    params: dict = {}
    state: dict = {}
    for module, ours, kind in model_rows(model.config):
        for param in _PARAMS[kind]:
            key = ours if kind in ("table", "ema", "embed", "bias") else f"{ours}.{_SUFFIX[param]}"
            if key not in state_dict:
                continue  # e.g. the official conv downsampling has no bias
            value = official_layout(kind, param, state_dict[key])
            (state if kind == "ema" else params).setdefault(module, {})[param] = value
        if kind == "ema":
            state[module].update(hidden=np.zeros_like(state[module]["average"]), counter=np.array(5, np.int32))
    return params, state


def write_pickle(path: Path, obj, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path
