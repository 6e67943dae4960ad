"""Official HiP parameters (google-deepmind/hierarchical_perceiver, Haiku) -> :class:`HiP`.

Module names of ``HiP`` / ``PerceiverIO`` (scope ``perceiver``) and ``HiPClassBottleneck`` (docs/checkpoints.md):

- ``perceiver/embedder/~embed/embed_{m}`` and ``.../~unembed/unembed_{m}`` (``embed``/``unembed`` are methods,
  hence ``~method``) -> ``embedders.{m}`` / ``unembedders.{m}``;
- ``perceiver/position_encoder/pos_emb_mae_{m}/pos_embs`` -> ``position_tables.{m}``;
  ``perceiver/position_encoder/position_encoding_linear{,_1,..}/w`` (no bias, one per modality slot of a call)
  -> ``position_projections.{i}``;
- ``perceiver/block_{i}`` (class bottleneck: ``perceiver_block_{i}``), projector created in the block's constructor:
  ``.../~/hi_p_cross_attention/{query_inputs/pos_embs, pre_attention_residual_linear, layer_norm (q), layer_norm_1
  (kv), attention/{query,key,value,attention_output}_linear, layer_norm_2, dense/mlp_{hidden,output}_linear}``
  -> ``blocks.{i}.{latents, skip_proj, cross_attend.*}``; ``.../~/self_attend_id_{j}/{layer_norm, attention, layer_norm_1,
  dense}`` -> ``blocks.{i}.self_attends.{j}``;
- ``perceiver/reconstruction_head/hi_p_cross_attention/...`` -> ``reconstruction_head``. In the class bottleneck the
  label head is created first, so it is ``reconstruction_head`` and the final one ``reconstruction_head_1``; each label
  ``m`` has ``embedder_{j}``/``position_encoder_{j}`` modules (``j`` = 1 + its rank among the labels of a call, read
  from the tree) -> ``label_embedders.{m}``, ``label_unembedders.{m}``, ``label_position_tables.{m}``.

The tree fixes the modalities (index dims, channels), the embedding width, every block's channels, self-attention
layers, latents in all (groups x latents) and MLP widenings, the number of position projections and which
modalities are labels. Groups and head counts are not in the tree: they come from a registered HiP variant (given,
or found by matching the tree's block structure) or from overrides.
"""

from __future__ import annotations

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
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP
from perceivers.models.hub import load_state_dict_strict
from perceivers.models.registry import get_config, get_entry, list_models

P = "perceiver"
WHAT = "official HiP parameters"
_ATTENTION = (("query_linear", "q_proj"), ("key_linear", "k_proj"), ("value_linear", "v_proj"),
              ("attention_output_linear", "o_proj"))
_CROSS = "~/hi_p_cross_attention"


def _attention_rows(hk: str, ours: str, norms: tuple[str, ...]) -> list[Row]:
    rows = [r for i, n in enumerate(norms) for r in layer_norm_rows(f"{hk}/layer_norm{haiku_suffix(i)}", f"{ours}.{n}")]
    rows += [r for h, o in _ATTENTION for r in linear_rows(f"{hk}/attention/{h}", f"{ours}.attention.{o}")]
    return rows + linear_rows(f"{hk}/dense/mlp_hidden_linear", f"{ours}.mlp.fc1") + linear_rows(
        f"{hk}/dense/mlp_output_linear", f"{ours}.mlp.fc2")


def _cross_rows(hk: str, ours: str) -> list[Row]:
    return _attention_rows(hk, f"{ours}.cross_attend", ("q_norm", "kv_norm", "mlp_norm"))


def block_scope(config: HiPConfig, i: int) -> str:
    return f"{P}/{'perceiver_block' if config.label_modalities else 'block'}_{i}"


def _label_slot(tree: Tree, name: str) -> int:
    """``j`` of the ``embedder_{j}`` holding label ``name`` (1 when the tree has none: reported as missing)."""
    for module in tree:
        head, _, tail = module.partition("/~embed/")
        if tail == f"embed_{name}" and head.startswith(f"{P}/embedder_"):
            return int(head.rsplit("_", 1)[1])
    return 1


def official_rows(config: HiPConfig, tree: Tree | None = None) -> list[Row]:
    """The key table for ``config`` (``tree`` only places the labels' ``embedder_{j}``)."""
    c, rows = config, []
    for m in c.inputs:
        rows += linear_rows(f"{P}/embedder/~embed/embed_{m}", f"embedders.{m}")
        rows += linear_rows(f"{P}/embedder/~unembed/unembed_{m}", f"unembedders.{m}")
        rows.append(Row(f"{P}/position_encoder/pos_emb_mae_{m}", "pos_embs", f"position_tables.{m}"))
    slots = c.num_position_slots if c.num_position_slots is not None else len(c.inputs)
    if c.num_position_encoding_channels not in (None, c.num_embedding_channels):
        rows += [Row(f"{P}/position_encoder/position_encoding_linear{haiku_suffix(i)}", "w",
                     f"position_projections.{i}.weight", "linear_w") for i in range(slots)]
    k = len(c.num_groups)
    for i in range(k):
        b, ours = block_scope(c, i), f"blocks.{i}"
        rows.append(Row(f"{b}/{_CROSS}/query_inputs", "pos_embs", f"{ours}.latents"))
        if i > c.processor_index and c.num_channels[k - 1 - i] != c.num_channels[i]:
            rows += linear_rows(f"{b}/{_CROSS}/pre_attention_residual_linear", f"{ours}.skip_proj")
        rows += _cross_rows(f"{b}/{_CROSS}", ours)
        for j in range(c.num_self_attend_layers[i]):
            rows += _attention_rows(f"{b}/~/self_attend_id_{j}", f"{ours}.self_attends.{j}",
                                    ("attention_norm", "mlp_norm"))
    head = f"{P}/reconstruction_head{'_1' if c.label_modalities else ''}/hi_p_cross_attention"
    rows += _cross_rows(head, "reconstruction_head")
    if c.label_modalities:
        rows += _cross_rows(f"{P}/reconstruction_head/hi_p_cross_attention", "label_reconstruction_head")
    for m in c.label_modalities:
        j = _label_slot(tree or {}, m)
        rows += linear_rows(f"{P}/embedder_{j}/~embed/embed_{m}", f"label_embedders.{m}")
        rows += linear_rows(f"{P}/embedder_{j}/~unembed/unembed_{m}", f"label_unembedders.{m}")
        rows.append(Row(f"{P}/position_encoder_{j}/pos_emb_mae_{m}", "pos_embs", f"label_position_tables.{m}"))
    return rows


def _scan(tree: Tree) -> dict[str, Any]:
    """Everything the tree fixes (see the module docstring)."""
    bottleneck = any(m.startswith(f"{P}/perceiver_block_") for m in tree)
    scope = f"{P}/{'perceiver_block' if bottleneck else 'block'}"
    k = 0
    while any(m.startswith(f"{scope}_{k}/") for m in tree):
        k += 1
    if k == 0:
        raise ConfigError(f"{WHAT}: no {scope}_0 module; is this a HiP / Perceiver IO tree of the "
                          f"hierarchical_perceiver code? (modules: {', '.join(sorted(tree)[:6])}, ...)")
    modalities, labels = {}, []
    for module in tree:
        base, _, name = module.partition("/pos_emb_mae_")
        if name and base.startswith(f"{P}/position_encoder"):
            index_dim, emb = shape_of(tree, module, "pos_embs", what=WHAT)
            lookup = f"{P}/embedder{base.removeprefix(f'{P}/position_encoder')}/~embed/embed_{name}"
            modalities[name] = (index_dim, shape_of(tree, lookup, "w", what=WHAT)[0])
            if base != f"{P}/position_encoder":
                labels.append(name)
    totals, channels, layers, self_w, cross_w = [], [], [], [], []
    for i in range(k):
        b = f"{scope}_{i}"
        latents, d = shape_of(tree, f"{b}/{_CROSS}/query_inputs", "pos_embs", what=WHAT)
        n_layers = sum(1 for m in tree if m.startswith(f"{b}/~/self_attend_id_") and m.endswith("/attention/query_linear"))
        totals.append(latents)
        channels.append(d)
        layers.append(n_layers)
        cross_w.append(shape_of(tree, f"{b}/{_CROSS}/dense/mlp_hidden_linear", "w", what=WHAT)[1] // d)
        self_w.append(shape_of(tree, f"{b}/~/self_attend_id_0/dense/mlp_hidden_linear", "w", what=WHAT)[1] // d
                      if n_layers else 4)
    emb = shape_of(tree, f"{P}/reconstruction_head{'_1' if bottleneck else ''}/hi_p_cross_attention/attention/"
                   "query_linear", "w", what=WHAT)[0]
    projections = count_modules(tree, f"{P}/position_encoder/position_encoding_linear")
    return {"modalities": modalities, "label_modalities": tuple(labels), "num_channels": tuple(channels),
            "num_self_attend_layers": tuple(layers), "self_attend_widening_factor": tuple(self_w),
            "cross_attend_widening_factor": tuple(cross_w), "num_embedding_channels": emb,
            "num_position_encoding_channels": (1024 if emb == 512 else 512) if projections else None,
            "num_position_slots": projections or None, "_totals": tuple(totals)}


def _matching_variants(found: dict[str, Any]) -> list[str]:
    out = []
    for name in list_models("hip"):
        c = get_config(name)
        if not isinstance(c, HiPConfig) or len(c.num_groups) != len(found["_totals"]):
            continue
        totals = tuple(g * n for g, n in zip(c.num_groups, c.num_latents, strict=True))
        if (totals, c.num_channels, c.num_self_attend_layers) == (
                found["_totals"], found["num_channels"], found["num_self_attend_layers"]):
            out.append(name)
    return out


def infer_config(tree: Tree, *, model: str | None = None, **overrides: Any) -> HiPConfig:
    """The configuration of an official tree: what the tree fixes, groups and heads from the registered variant
    ``model`` (default: the one whose block structure matches), then ``overrides`` (``HiPConfig`` fields)."""
    found = _scan(tree)
    totals = found.pop("_totals")
    if model is None and "num_groups" not in overrides:
        matches = _matching_variants({**found, "_totals": totals})
        if not matches:
            raise ConfigError(
                f"{WHAT} match no registered HiP variant (blocks: {len(totals)}, latents in all {list(totals)}, "
                f"channels {list(found['num_channels'])}, self-attention layers {list(found['num_self_attend_layers'])}"
                "): pass num_groups and num_self_attend_heads (--num-groups, --num-self-attend-heads)")
        model = matches[0]
    base: dict[str, Any] = {"num_cross_attend_heads": (1,) * len(totals)}
    if model is not None:
        if get_entry(model).model_cls is not HiP:
            raise ConfigError(f"model={model!r} is not a registered HiP variant (see `perceivers models`)")
        v = get_config(model)
        base = {k: getattr(v, k) for k in ("num_groups", "num_self_attend_heads", "num_cross_attend_heads",
                                           "regroup_type", "sort_modalities")}
    base.update(overrides)
    groups = base.get("num_groups")
    if groups is None or "num_self_attend_heads" not in base:
        raise ConfigError("num_groups and num_self_attend_heads are needed (the tree does not fix them)")
    groups = tuple(groups)
    if len(groups) != len(totals) or any(t % g for t, g in zip(totals, groups, strict=True)):
        raise ConfigError(f"num_groups={list(groups)} does not fit the tree's {len(totals)} blocks of "
                          f"{list(totals)} latents in all")
    latents = tuple(t // g for t, g in zip(totals, groups, strict=True))
    return HiPConfig(**{**found, "num_latents": latents, **base, "num_groups": groups})


def convert_tree_to_model(tree: Tree, config: HiPConfig, *, source: str = WHAT) -> HiP:
    """Check ``tree`` against ``config`` (names and shapes, every problem at once), then load it. Eval mode."""
    with torch.device("meta"):
        model = HiP(config)
    rows = official_rows(config, tree)
    size = (f"read as {len(config.num_groups)} blocks, channels {list(config.num_channels)}, modalities "
            f"{ {m: list(s) for m, s in config.modalities.items()} }")
    check_tree(tree, rows, {k: v.shape for k, v in model.state_dict().items()}, what=f"{source} ({size})")
    load_state_dict_strict(model, convert_tree(tree, rows), source=source)
    return model.eval()


def convert_hip_file(path: str | Path, *, model: str | None = None, **overrides: Any) -> HiP:
    """Read an official parameter file (Haiku pickle or ``module/param`` npz), infer its configuration and convert
    it (see :func:`infer_config`)."""
    tree = read_tree(path)
    return convert_tree_to_model(tree, infer_config(tree, model=model, **overrides), source=str(path))
