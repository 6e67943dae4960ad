"""Official Perceiver AR parameters (google-research/perceiver-ar, Haiku) -> :class:`PerceiverAR`.

Module names (``perceiver_ar_model.py``; ``~`` = created in the parent's constructor, docs/checkpoints.md):

=====================================================  ==========================================
``perceiver_ar/~/embed/embeddings [V, C]``              ``token_embedding.weight``
``perceiver_ar/~/embed_{k}/embeddings [R_k, C]``        ``position_embeddings`` (tables stacked, k = 1..)
``perceiver_ar/~/cross_attention/...``                  ``cross_attend`` (``layer_norm`` q, ``_1`` kv,
                                                        ``attention/linear`` .. ``linear_3`` q/k/v/o,
                                                        ``layer_norm_2`` + ``dense/linear``, ``_1`` MLP)
``perceiver_ar/~/linear`` (``z_linear``)                ``query_proj``
``perceiver_ar/~/self_attention{,_1,..}/...``           ``self_attends.{i}`` (``layer_norm``, ``attention``,
                                                        ``layer_norm_1``, ``dense``)
``perceiver_ar/layer_norm`` / ``perceiver_ar/~/logits`` ``final_norm`` / ``logits``
=====================================================  ==========================================

The tree fixes the vocabulary, widths, layer count, MLP widenings and the position encoding (no
``embed_1``: rotary; one table of ``R`` rows: absolute with ``position_table_size = R`` and, unless
given, ``max_context_length = R - 1``; three: the ImageNet tables, official axis order ``(x, y, channel)``
over raster ``(y, x, channel)`` order, so ours (rows, columns, channels) are ``embed_2, embed_1, embed_3`` and
``position_grid = (R_2 - 2, R_1 - 2, R_3 - 2)``).
What it cannot fix (head counts, latents, context length, rotary fraction) comes from a released
``sweep`` of the official ``experiment.py`` or from overrides; defaults are the released values
(16 heads, 1024 latents, rotary fraction 0.5). Only the ``initial_query_embed_style='none'``
architecture of every released sweep is supported (no query MLP / learned queries / extra
cross-attends / several latents per position); such trees are refused as unexpected modules.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from perceivers.converters.official_tree import (
    Row,
    Tree,
    check_tree,
    convert_tree,
    count_modules,
    haiku_suffix,
    layer_norm_rows,
    linear_rows,
    read_tree,
    shape_of,
)
from perceivers.core.errors import ConfigError
from perceivers.core.validation import check_choice
from perceivers.models.hub import load_state_dict_strict
from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig

SCOPE = "perceiver_ar"
WHAT = "official Perceiver AR parameters"

_RELEASED = {"num_cross_attend_heads": 16, "num_self_attend_heads": 16, "dropout_prob": 0.1}
#: Released sweeps of the official ``experiment.py get_sweep``: what the parameter tree cannot tell.
SWEEPS: dict[str, dict[str, Any]] = {
    "random_mirrored_32": {"max_context_length": 32, "num_latents": 16, "position_init": "sinusoidal",
                           "learnable_position_embeddings": False, **_RELEASED},
    "random_mirrored_131072": {"max_context_length": 131_072, "num_latents": 1024, "position_init": "sinusoidal",
                               "learnable_position_embeddings": False, **_RELEASED},
    "imagenet_w_positions": {"max_context_length": 12_416, "num_latents": 1024, "position_init": "random",
                             "learnable_position_embeddings": True, **_RELEASED},
}

#: Official table ``embed_k`` of each of our axes: one sequence axis, or the ImageNet (x, y, channel) tables
#: read in our (row = y, column = x, channel) grid order.
_TABLE_ORDER = {1: (1,), 3: (2, 1, 3)}
_ATTENTION = (("linear", "q_proj"), ("linear_1", "k_proj"), ("linear_2", "v_proj"), ("linear_3", "o_proj"))


def _block_rows(hk: str, ours: str, norms: tuple[str, ...]) -> list[Row]:
    """Attention + dense of one official layer; ``norms`` = our LayerNorms in Haiku creation order."""
    rows = [r for i, n in enumerate(norms) for r in layer_norm_rows(f"{hk}/layer_norm{haiku_suffix(i)}", f"{ours}.{n}")]
    rows += [r for h, o in _ATTENTION for r in linear_rows(f"{hk}/attention/{h}", f"{ours}.attention.{o}")]
    return rows + linear_rows(f"{hk}/dense/linear", f"{ours}.mlp.fc1") + linear_rows(f"{hk}/dense/linear_1",
                                                                                     f"{ours}.mlp.fc2")


def official_rows(config: PerceiverARConfig) -> list[Row]:
    """The key table for ``config``: every official parameter and the key it becomes."""
    p = SCOPE
    rows = [Row(f"{p}/~/embed", "embeddings", "token_embedding.weight")]
    if config.position_encoding == "absolute":
        rows += [Row(f"{p}/~/embed_{k}", "embeddings", "position_embeddings", part=part)
                 for part, k in enumerate(_TABLE_ORDER[len(config.position_table_sizes)])]
    rows += _block_rows(f"{p}/~/cross_attention", "cross_attend", ("q_norm", "kv_norm", "mlp_norm"))
    rows += linear_rows(f"{p}/~/linear", "query_proj")
    for i in range(config.num_self_attend_layers):
        rows += _block_rows(f"{p}/~/self_attention{haiku_suffix(i)}", f"self_attends.{i}",
                            ("attention_norm", "mlp_norm"))
    return rows + layer_norm_rows(f"{p}/layer_norm", "final_norm") + linear_rows(f"{p}/~/logits", "logits")


def _widening(tree: Tree, scope: str, width: int) -> int:
    hidden = shape_of(tree, f"{scope}/dense/linear", "w", what=WHAT)[1]
    if hidden % width:
        raise ConfigError(f"{WHAT}: {scope}/dense/linear/w is {hidden} wide, not a multiple of the {width} channels")
    return hidden // width


def infer_config(tree: Tree, *, sweep: str | None = None, **overrides: Any) -> PerceiverARConfig:
    """The configuration an official tree was built with: sizes from the tree, the rest from ``sweep`` (a key of
    :data:`SWEEPS`) and ``overrides`` (``PerceiverARConfig`` fields; they win)."""
    p = SCOPE
    vocab, channels = shape_of(tree, f"{p}/~/embed", "embeddings", what=WHAT)
    latent_channels = shape_of(tree, f"{p}/~/linear", "w", what=WHAT)[1]
    layers = count_modules(tree, f"{p}/~/self_attention")
    tables = [shape_of(tree, f"{p}/~/embed_{k}", "embeddings", what=WHAT)[0]
              for k in range(1, count_modules(tree, f"{p}/~/embed"))]
    found: dict[str, Any] = {
        "vocab_size": vocab, "num_channels": channels, "num_latent_channels": latent_channels,
        "num_self_attend_layers": layers,
        "cross_attend_widening_factor": _widening(tree, f"{p}/~/cross_attention", latent_channels),
        "self_attend_widening_factor": _widening(tree, f"{p}/~/self_attention", latent_channels) if layers else 1}
    settings: dict[str, Any] = {}
    if sweep is not None:
        check_choice("sweep", sweep, tuple(SWEEPS))
        settings.update(SWEEPS[sweep])
    settings.update(overrides)
    fixed = sorted(set(found) & set(settings))
    if fixed:
        raise ConfigError(f"{', '.join(fixed)} cannot be overridden: the parameter file fixes them "
                          f"({', '.join(f'{k}={found[k]}' for k in fixed)})")
    if not tables:
        found["position_encoding"] = "rotary"
        if "max_context_length" not in settings:
            raise ConfigError(f"{WHAT} use rotary positions (no position table), so the tree does not give the "
                              "context length: pass max_context_length (--max-context-length) or a sweep")
    elif len(tables) == 1:
        found["position_encoding"] = "absolute"
        settings.setdefault("max_context_length", tables[0] - 1)
        found["position_table_size"] = None if tables[0] == settings["max_context_length"] + 1 else tables[0]
    elif len(tables) == 3:
        grid = tuple(tables[k - 1] - 2 for k in _TABLE_ORDER[3])
        found.update(position_encoding="absolute", position_grid=grid)
        settings.setdefault("max_context_length", math.prod(grid) + 1)
    else:
        raise ConfigError(f"{WHAT} have {len(tables)} position tables (embed_1 .. embed_{len(tables)}); supported are "
                          "none (rotary), one (a sequence) and three (ImageNet x, y, channel)")
    settings.setdefault("num_latents", min(1024, settings["max_context_length"]))
    settings.setdefault("dropout_prob", 0.0)
    return PerceiverARConfig(**found, **settings)


def convert_tree_to_model(tree: Tree, config: PerceiverARConfig, *, source: str = WHAT) -> PerceiverAR:
    """Check ``tree`` against ``config`` (names and shapes, every problem at once), then load it. Eval mode."""
    with torch.device("meta"):
        model = PerceiverAR(config)
    rows = official_rows(config)
    check_tree(tree, rows, {k: v.shape for k, v in model.state_dict().items()}, what=f"{source} ({_size(config)})")
    load_state_dict_strict(model, convert_tree(tree, rows), source=source)
    return model.eval()


def _size(c: PerceiverARConfig) -> str:
    pos = c.position_encoding if c.position_encoding == "rotary" else f"absolute tables {list(c.position_table_sizes)}"
    return (f"read as vocab {c.vocab_size}, {c.num_channels} input / {c.num_latent_channels} latent channels, "
            f"{c.num_self_attend_layers} self-attention layers, {pos}")


def convert_perceiver_ar_file(path: str | Path, *, sweep: str | None = None, **overrides: Any) -> PerceiverAR:
    """Read an official parameter file (Haiku pickle or ``module/param`` npz), infer its configuration and
    convert it (see :func:`infer_config`)."""
    tree = read_tree(path)
    return convert_tree_to_model(tree, infer_config(tree, sweep=sweep, **overrides), source=str(path))
