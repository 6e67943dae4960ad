"""Official HiP parameter trees (google-deepmind/hierarchical_perceiver ``perceiver.py``, ``perceiver_blocks.py``)
-> HiP, for HiP, HiPClassBottleneck and the repository's Perceiver IO.

The trees are written out here from the official module structure (Haiku names and shapes), independently of the
converter's key table, and filled with random values; outputs are compared with a float64 numpy transcription of
the official forward (embed, MAE position tables and their per-slot projections, ConstNumGrouper /
ConcatenateGrouper, regroup, HiPCrossAttention with post-attention residual and U-Net skips, SelfAttention,
ReconstructionHead, ungroup, unembed; class labels joining the processor).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perceivers.converters.hip_official import (
    convert_hip_file,
    convert_tree_to_model,
    infer_config,
    official_rows,
)
from perceivers.converters.official_tree import check_tree
from perceivers.core.errors import ConfigError
from perceivers.models import from_pretrained, get_config, list_models
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP

P = "perceiver"
X = "~/hi_p_cross_attention"


def official_tree(c: HiPConfig, *, label_slots: dict[str, int] | None = None, seed: int = 0,
                  shapes_only: bool = False) -> dict:
    """``hk.transform(HiP | HiPClassBottleneck | PerceiverIO).init`` names and shapes for the sizes of ``c``."""
    rng = np.random.default_rng(seed)
    tree: dict = {}

    def put(module, **shapes):
        tree[module] = {k: np.broadcast_to(np.float32(0), s) if shapes_only else
                        (rng.standard_normal(s) * (0.2 if k == "scale" else 0.4) + (k == "scale")).astype(np.float32)
                        for k, s in shapes.items()}

    def linear(module, i, o, bias=True):
        put(module, **({"w": (i, o), "b": (o,)} if bias else {"w": (i, o)}))

    def attention_layer(scope, q_in, kv_in, out, wf, cross):
        norms = ["layer_norm", "layer_norm_1", "layer_norm_2"] if cross else ["layer_norm", "layer_norm_1"]
        for name, ch in zip(norms, [q_in, kv_in, out] if cross else [q_in, out], strict=True):
            put(f"{scope}/{name}", scale=(ch,), offset=(ch,))
        qk = kv_in if cross else q_in  # cross: qk = v = input channels; output = query channels
        for name, i, o in [("query_linear", q_in, qk), ("key_linear", kv_in, qk), ("value_linear", kv_in, qk),
                           ("attention_output_linear", qk, out)]:
            linear(f"{scope}/attention/{name}", i, o)
        linear(f"{scope}/dense/mlp_hidden_linear", out, wf * out)
        linear(f"{scope}/dense/mlp_output_linear", wf * out, out)

    e, k = c.num_embedding_channels, len(c.num_groups)
    labels = c.label_modalities
    for m in c.inputs:
        index_dim, ch = c.modalities[m]
        linear(f"{P}/embedder/~embed/embed_{m}", ch, e)
        linear(f"{P}/embedder/~unembed/unembed_{m}", e, ch)
        put(f"{P}/position_encoder/pos_emb_mae_{m}", pos_embs=(index_dim, e))
    if c.num_position_encoding_channels not in (None, e):
        for i in range(c.num_position_slots or len(c.inputs)):
            linear(f"{P}/position_encoder/position_encoding_linear{'' if i == 0 else f'_{i}'}", e, e, bias=False)
    block = "perceiver_block" if labels else "block"
    for i in range(k):
        d, cin = c.num_channels[i], e if i == 0 else c.num_channels[i - 1]
        scope = f"{P}/{block}_{i}"
        put(f"{scope}/{X}/query_inputs", pos_embs=(c.num_groups[i] * c.num_latents[i], d))
        skip = c.num_channels[k - 1 - i]
        if i > k // 2 and skip != d:
            linear(f"{scope}/{X}/pre_attention_residual_linear", skip, d)
        attention_layer(f"{scope}/{X}", d, cin, d, c.cross_attend_widening_factor[i], cross=True)
        for j in range(c.num_self_attend_layers[i]):
            attention_layer(f"{scope}/~/self_attend_id_{j}", d, d, d, c.self_attend_widening_factor[i], cross=False)
    attention_layer(f"{P}/reconstruction_head{'_1' if labels else ''}/hi_p_cross_attention", e,
                    c.num_channels[-1], e, 1, cross=True)
    if labels:
        dmid, din = c.num_channels[k // 2], c.num_channels[k // 2 - 1]
        attention_layer(f"{P}/reconstruction_head/hi_p_cross_attention", din, dmid, din, 1, cross=True)
        for m in labels:
            j = (label_slots or {}).get(m, 1)
            index_dim, ch = c.modalities[m]
            linear(f"{P}/embedder_{j}/~embed/embed_{m}", ch, din)
            linear(f"{P}/embedder_{j}/~unembed/unembed_{m}", din, ch)
            put(f"{P}/position_encoder_{j}/pos_emb_mae_{m}", pos_embs=(index_dim, din))
    return tree


# ------------------------------------------------------------------------- the official forward, in numpy


def reference(tree: dict, c: HiPConfig, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    t = {m: {k: v.astype(np.float64) for k, v in p.items()} for m, p in tree.items()}

    def lin(m, x):
        return x @ t[m]["w"] + t[m].get("b", 0.0)

    def ln(m, x):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * t[m]["scale"] + t[m]["offset"]

    def attend(scope, q_in, kv_in, heads):
        q, k, v = (lin(f"{scope}/attention/{n}", x) for n, x in (("query_linear", q_in), ("key_linear", kv_in),
                                                                   ("value_linear", kv_in)))
        hd = q.shape[-1] // heads
        split = [a.reshape(*a.shape[:-1], heads, hd) for a in (q, k, v)]
        w = np.einsum("...nhc,...mhc->...hnm", split[0], split[1]) / math.sqrt(hd)
        w = np.exp(w - w.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out = np.einsum("...hnm,...mhd->...nhd", w, split[2]).reshape(*q.shape[:-1], -1)
        return lin(f"{scope}/attention/attention_output_linear", out)

    def cross(scope, queries, x, heads, residual=True):
        att = attend(scope, ln(f"{scope}/layer_norm", queries), ln(f"{scope}/layer_norm_1", x), heads)
        if residual:
            att = att + queries
        return att + dense(scope, ln(f"{scope}/layer_norm_2", att))

    def dense(scope, x):
        return lin(f"{scope}/dense/mlp_output_linear", np.maximum(lin(f"{scope}/dense/mlp_hidden_linear", x), 0) ** 2)

    def regroup(x, g):
        b, g0, n, ch = x.shape
        return x.reshape(b, g, g0 * n // g, ch)

    k, mid, labels = len(c.num_groups), len(c.num_groups) // 2, c.label_modalities
    plain = {m: x for m, x in inputs.items() if m not in labels}
    project = c.num_position_encoding_channels not in (None, c.num_embedding_channels)
    z, query = {}, {}
    for slot, (m, x) in enumerate(plain.items()):
        pos = t[f"{P}/position_encoder/pos_emb_mae_{m}"]["pos_embs"]
        if project:
            pos = pos @ t[f"{P}/position_encoder/position_encoding_linear{'' if slot == 0 else f'_{slot}'}"]["w"]
        z[m] = lin(f"{P}/embedder/~embed/embed_{m}", x) + pos
        query[m] = np.broadcast_to(pos, z[m].shape)
    if k == 1:  # ConcatenateGrouper
        def group(d):
            return np.concatenate(list(d.values()), axis=1)[:, None]

        def ungroup(x):
            out, start = {}, 0
            for m, v in plain.items():
                out[m] = x[:, 0, start:start + v.shape[1]]
                start += v.shape[1]
            return out
    else:  # ConstNumGrouper (perceiver_helpers.assign_groups_to_modalities)
        dims = [v.shape[1] for v in plain.values()]
        counts, per = [1] * len(dims), list(map(float, dims))
        for _ in range(c.num_groups[0] - len(dims)):
            a = int(np.argmax(per))
            counts[a] += 1
            per[a] = dims[a] / counts[a]
        tpg = math.ceil(max(per))
        info = [(n, -n % g, tpg - (n + (-n % g)) // g, g) for n, g in zip(dims, counts, strict=True)]

        def group(d):
            parts = []
            for v, (_, final, gpad, g) in zip(d.values(), info, strict=True):
                v = np.pad(v, ((0, 0), (0, final), (0, 0)))
                v = v.reshape(v.shape[0], g, -1, v.shape[-1])
                parts.append(np.pad(v, ((0, 0), (0, 0), (0, gpad), (0, 0))))
            return np.concatenate(parts, axis=1)

        def ungroup(x):
            out, start = {}, 0
            for m, (_, final, gpad, g) in zip(plain, info, strict=True):
                v = x[:, start:start + g, :x.shape[2] - gpad]
                v = v.reshape(v.shape[0], -1, v.shape[-1])
                out[m] = v[:, :v.shape[1] - final]
                start += g
            return out
    h, q = group(z), group(query)
    block = "perceiver_block" if labels else "block"
    hidden, label_out = [], {}
    for i in range(k):
        scope = f"{P}/{block}_{i}"
        if i > 0:
            h = regroup(h, c.num_groups[i])
        if i == mid and labels:
            din = h.shape[-1]
            lq = {}
            for m in labels:
                j = 1
                while f"{P}/embedder_{j}/~embed/embed_{m}" not in t:
                    j += 1
                pos = t[f"{P}/position_encoder_{j}/pos_emb_mae_{m}"]["pos_embs"]
                h = np.concatenate([h, (lin(f"{P}/embedder_{j}/~embed/embed_{m}", inputs[m]) + pos)[:, None]], axis=2)
                lq[m] = (j, np.broadcast_to(pos, (h.shape[0], 1, *pos.shape)))
            assert din == h.shape[-1]
        lat = t[f"{scope}/{X}/query_inputs"]["pos_embs"]
        g = c.num_groups[i]
        lat = np.broadcast_to(lat.reshape(g, -1, lat.shape[-1]), (h.shape[0], g, lat.shape[0] // g, lat.shape[-1]))
        if i > mid:
            skip = hidden[k - 1 - i]
            if f"{scope}/{X}/pre_attention_residual_linear" in t:
                skip = lin(f"{scope}/{X}/pre_attention_residual_linear", skip)
            lat = lat + skip
        h = cross(f"{scope}/{X}", lat, h, c.num_cross_attend_heads[i])
        for j in range(c.num_self_attend_layers[i]):
            s = f"{scope}/~/self_attend_id_{j}"
            h = h + attend(s, ln(f"{s}/layer_norm", h), ln(f"{s}/layer_norm", h), c.num_self_attend_heads[i])
            h = h + dense(s, ln(f"{s}/layer_norm_1", h))
        hidden.append(h)
        if i == mid and labels:
            for m, (j, queries) in lq.items():
                r = cross(f"{P}/reconstruction_head/hi_p_cross_attention", queries, h, 1, residual=False)
                label_out[m] = lin(f"{P}/embedder_{j}/~unembed/unembed_{m}", r[:, 0])
    head = f"{P}/reconstruction_head{'_1' if labels else ''}/hi_p_cross_attention"
    rec = ungroup(cross(head, q, h, 1, residual=False))
    return {**{m: lin(f"{P}/embedder/~unembed/unembed_{m}", v) for m, v in rec.items()}, **label_out}


def run_both(tree, config, batch=2, seed=3, names=None):
    model = convert_tree_to_model(tree, config)
    rng = np.random.default_rng(seed)
    names = names or list(config.modalities)
    inputs = {m: rng.standard_normal((batch, *config.modalities[m])) for m in names}
    want = reference(tree, config, inputs)
    with torch.no_grad():
        got = model({m: torch.from_numpy(v).float() for m, v in inputs.items()})["input_reconstruction"]
    assert list(got) == list(want)
    return model, max(float(np.abs(got[m].double().numpy() - want[m]).max()) for m in want)


HIP5 = HiPConfig(modalities={"image": (12, 3), "audio": (10, 2)}, num_groups=(4, 2, 1, 2, 4),
                 num_self_attend_layers=(1, 2, 1, 1, 1), num_latents=(3, 4, 4, 4, 3), num_channels=(8, 12, 16, 8, 4),
                 num_self_attend_heads=(2, 2, 4, 2, 2), num_cross_attend_heads=(1, 2, 1, 2, 1),
                 self_attend_widening_factor=(4, 2, 3, 1, 2), cross_attend_widening_factor=(1, 2, 1, 3, 1),
                 num_embedding_channels=8, num_position_encoding_channels=512)
BOTTLENECK = HiPConfig(modalities={"image": (8, 3), "label": (3, 2)}, label_modalities=("label",),
                       num_groups=(2, 1, 2), num_self_attend_layers=(1, 1, 1), num_latents=(2, 4, 2),
                       num_channels=(8, 12, 8), num_self_attend_heads=(2, 2, 2), num_cross_attend_heads=(1, 1, 1),
                       num_embedding_channels=8, num_position_encoding_channels=512)
IO = HiPConfig(modalities={"image": (9, 3), "audio": (5, 2)}, num_groups=(1,), num_self_attend_layers=(2,),
               num_latents=(4,), num_channels=(8,), num_self_attend_heads=(2,), num_cross_attend_heads=(2,),
               self_attend_widening_factor=2, cross_attend_widening_factor=3, num_embedding_channels=8,
               num_position_encoding_channels=None)


@pytest.mark.parametrize("config", [HIP5, BOTTLENECK, IO], ids=["hip", "class-bottleneck", "perceiver-io"])
def test_official_tree_converts_with_parity_and_saves_exactly(config, tmp_path):
    tree = official_tree(config)
    groups = {"num_groups": config.num_groups, "num_self_attend_heads": config.num_self_attend_heads,
              "num_cross_attend_heads": config.num_cross_attend_heads}
    inferred = infer_config(tree, **groups)
    assert inferred.replace(num_position_encoding_channels=config.num_position_encoding_channels) == config.replace(
        num_position_slots=inferred.num_position_slots)
    model, diff = run_both(tree, inferred)
    assert diff < 1e-4
    model.save_pretrained(tmp_path / "out")
    loaded = from_pretrained(tmp_path / "out")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


HIP_VARIANTS = [n for n in list_models() if isinstance(get_config(n), HiPConfig)]


@pytest.mark.parametrize("name", HIP_VARIANTS)
def test_every_registered_variant_at_debug_size(name):
    config = get_config(name).debug_size().replace(use_mask_token=False)
    tree = official_tree(config, seed=len(name))
    _, diff = run_both(tree, config, names=[*config.inputs, *config.label_modalities])
    assert diff < 1e-4


@pytest.mark.parametrize("name", HIP_VARIANTS)
def test_every_registered_variant_at_full_size_names_and_shapes(name):
    """Zero-strided arrays of the real shapes: the variant is recognised from the tree and every name and shape
    matches (no memory is used)."""
    config = get_config(name).replace(use_mask_token=False)
    tree = official_tree(config, shapes_only=True)
    inferred = infer_config(tree)
    assert (inferred.num_groups, inferred.num_latents, inferred.num_self_attend_heads) == (
        config.num_groups, config.num_latents, config.num_self_attend_heads)
    with torch.device("meta"):
        model = HiP(inferred)
    check_tree(tree, official_rows(inferred, tree), {k: v.shape for k, v in model.state_dict().items()}, what="t")


def test_label_slot_is_read_from_the_tree():
    tree = official_tree(BOTTLENECK, label_slots={"label": 2})
    assert f"{P}/embedder_2/~embed/embed_label" in tree
    _, diff = run_both(tree, infer_config(tree, num_groups=(2, 1, 2), num_self_attend_heads=(2, 2, 2)))
    assert diff < 1e-4


def test_every_problem_is_listed_at_once_and_npz(tmp_path):
    tree = official_tree(HIP5)
    del tree[f"{P}/block_3/{X}/pre_attention_residual_linear"]
    tree[f"{P}/block_1/{X}/layer_norm_1"]["scale"] = np.zeros(5, np.float32)
    tree[f"{P}/stray"] = {"w": np.zeros(1, np.float32)}
    groups = {"num_groups": HIP5.num_groups, "num_self_attend_heads": HIP5.num_self_attend_heads,
              "num_cross_attend_heads": HIP5.num_cross_attend_heads}
    path = tmp_path / "params.npz"
    np.savez(path, **{f"{m}/{p}": a for m, ps in tree.items() for p, a in ps.items()})
    with pytest.raises(ConfigError) as info:
        convert_hip_file(path, **groups)
    msg = str(info.value)
    assert "\n" not in msg and "channels [8, 12, 16, 8, 4]" in msg
    assert f"2 missing: {P}/block_3/{X}/pre_attention_residual_linear/b" in msg
    assert f"1 unexpected: {P}/stray/w" in msg
    assert f"1 mis-shaped: {P}/block_1/{X}/layer_norm_1/scale [5] (model: [8])" in msg
    with pytest.raises(ConfigError, match="match no registered HiP variant"):
        convert_hip_file(path)


def test_cli_converts_with_group_flags_and_one_line_errors(tmp_path, capsys):
    import pickle

    from perceivers.cli.main import main

    path = tmp_path / "params.pickle"
    path.write_bytes(pickle.dumps(official_tree(BOTTLENECK)))
    out = tmp_path / "out"
    assert main(["convert", "hip", str(path), str(out), "--num-groups", "2,1,2", "--num-self-attend-heads",
                 "2,2,2"]) == 0
    assert from_pretrained(out).config.label_modalities == ("label",)
    capsys.readouterr()
    assert main(["convert", "hip", str(path), str(tmp_path / "o2"), "--num-groups", "3,1,3",
                 "--num-self-attend-heads", "2,2,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_groups=[3, 1, 3] does not fit" in err
    with pytest.raises(SystemExit):
        main(["convert", "hip", str(path), str(tmp_path / "o3"), "--num-groups", "two"])
