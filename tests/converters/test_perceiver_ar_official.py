"""Official Perceiver AR parameter trees (google-research/perceiver-ar ``perceiver_ar_model.py``) -> PerceiverAR.

The trees are written out here from the official module structure (names and shapes), independently of the
converter's key table, and filled with random values; the converted model's logits are compared with a float64
numpy transcription of the official forward (absolute positions from data, final-block causal masks, -1e30
masking, query residual, squared-ReLU MLPs, final LayerNorm).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perceivers.converters.official_tree import check_tree
from perceivers.converters.perceiver_ar_official import (
    convert_perceiver_ar_file,
    convert_tree_to_model,
    infer_config,
    official_rows,
)
from perceivers.core.errors import ConfigError
from perceivers.models import from_pretrained
from perceivers.models.perceiver_ar.model import PerceiverAR

P = "perceiver_ar"


def official_tree(vocab, channels, latent_channels, layers, tables, cross_w=4, self_w=4, seed=0, shapes_only=False):
    """``hk.transform(PerceiverAR).init`` names and shapes: Embed ``embed`` (+ ``embed_k`` per position axis),
    ``cross_attention`` and ``self_attention_i`` (each: ``attention/linear..linear_3``, ``dense/linear{,_1}``,
    LayerNorms in creation order), ``z_linear`` = ``linear``, final ``layer_norm`` (made in ``__call__``: no ``~``),
    ``logits``. ``shapes_only``: zero-strided arrays (no memory), for full-size name and shape checks."""
    rng = np.random.default_rng(seed)
    tree = {}

    def fill(param, shape):
        if shapes_only:
            return np.broadcast_to(np.float32(0), shape)
        return (rng.standard_normal(shape) * (0.2 if param == "scale" else 0.3) + (param == "scale")).astype(np.float32)

    def put(module, **shapes):
        tree[module] = {k: fill(k, s) for k, s in shapes.items()}

    def linear(module, i, o):
        put(module, w=(i, o), b=(o,))

    def norm(module, c):
        put(module, scale=(c,), offset=(c,))

    def layer(scope, q_in, kv_in, wf, cross):
        norm(f"{scope}/layer_norm", q_in)
        if cross:
            norm(f"{scope}/layer_norm_1", kv_in)
        qk = kv_in  # shape_for_attn='kv': qk = v = kv channels; output = query channels
        for k, (i, o) in enumerate([(q_in, qk), (kv_in, qk), (kv_in, qk), (qk, q_in)]):
            linear(f"{scope}/attention/linear{'' if k == 0 else f'_{k}'}", i, o)
        norm(f"{scope}/layer_norm_{2 if cross else 1}", q_in)
        linear(f"{scope}/dense/linear", q_in, wf * q_in)
        linear(f"{scope}/dense/linear_1", wf * q_in, q_in)

    put(f"{P}/~/embed", embeddings=(vocab, channels))
    for k, rows in enumerate(tables):
        put(f"{P}/~/embed_{k + 1}", embeddings=(rows, channels))
    layer(f"{P}/~/cross_attention", latent_channels, channels, cross_w, cross=True)
    linear(f"{P}/~/linear", channels, latent_channels)
    for i in range(layers):
        layer(f"{P}/~/self_attention{'' if i == 0 else f'_{i}'}", latent_channels, latent_channels, self_w, cross=False)
    norm(f"{P}/layer_norm", latent_channels)
    linear(f"{P}/~/logits", latent_channels, vocab)
    return tree


def rotate(x, positions, fraction, max_wavelength):
    """Official ``_apply_rotary_encoding_to_subset`` (every head): ``x (B, T, H, hd)``, ``positions (B, T)``; the first
    ``floor(hd * fraction / 2) * 2`` channels rotated in interleaved pairs, wavelengths 1 .. ``max_wavelength``."""
    d = math.floor(x.shape[-1] * fraction / 2) * 2
    bands = d // 2
    inv_freq = np.repeat(1.0 / max_wavelength ** ((2.0 / d) * np.linspace(0, bands, bands)), 2)
    angles = positions[:, :, None, None] * inv_freq  # (B, T, 1, d)
    xr = x[..., :d]
    spliced = np.stack((-xr[..., 1::2], xr[..., ::2]), axis=-1).reshape(xr.shape)
    return np.concatenate([xr * np.cos(angles) + spliced * np.sin(angles), x[..., d:]], axis=-1)


def reference_logits(tree, ids, idxs, num_latents, cross_heads, self_heads, rotary=None):
    """Official ``PerceiverAR.__call__`` in float64 numpy for full-length sequences ``ids (B, M)`` with data
    positions ``idxs (B, M, D)``; ``rotary=(fraction_to_rotate, max_wavelength)`` for rotary trees (no tables)."""
    t = {m: {k: v.astype(np.float64) for k, v in p.items()} for m, p in tree.items()}
    def lin(m, x):
        return x @ t[m]["w"] + t[m]["b"]

    def ln(m, x):
        mu = x.mean(-1, keepdims=True)
        var = (x ** 2).mean(-1, keepdims=True) - mu ** 2  # use_fast_variance
        return (x - mu) / np.sqrt(var + 1e-5) * t[m]["scale"] + t[m]["offset"]

    def attention(scope, xq, xkv, mask, heads, q_pos, k_pos):
        q, k, v = (lin(f"{scope}/attention/linear{s}", x) for s, x in (("", xq), ("_1", xkv), ("_2", xkv)))
        b, n, c = q.shape

        def split(a):
            return a.reshape(b, a.shape[1], heads, c // heads)

        qh, kh = split(q), split(k)
        if rotary is not None:
            qh, kh = rotate(qh, q_pos, *rotary), rotate(kh, k_pos, *rotary)
        logits = np.einsum("bthd,bThd->bhtT", qh, kh) / np.sqrt(c // heads)
        logits = np.where(mask[:, None], logits, -1e30)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out = np.einsum("bhtT,bThd->bthd", w, split(v)).reshape(b, n, c)
        return lin(f"{scope}/attention/linear_3", out)

    def dense(scope, x):
        return lin(f"{scope}/dense/linear_1", np.maximum(lin(f"{scope}/dense/linear", x), 0) ** 2)

    b, m = ids.shape
    x = t[f"{P}/~/embed"]["embeddings"][ids]
    for k in range(idxs.shape[-1] if rotary is None else 0):
        x = x + t[f"{P}/~/embed_{k + 1}"]["embeddings"][idxs[..., k]]
    steps = np.arange(m - num_latents, m)  # latent_last_steps for full-length sequences
    z = lin(f"{P}/~/linear", x[:, steps])
    enc = np.broadcast_to(np.arange(m)[None, :] <= steps[:, None], (b, num_latents, m))
    proc = np.broadcast_to(steps[None, :] <= steps[:, None], (b, num_latents, num_latents))
    s = f"{P}/~/cross_attention"
    pos = idxs[..., 0].astype(np.float64)
    z = z + attention(s, ln(f"{s}/layer_norm", z), ln(f"{s}/layer_norm_1", x), enc, cross_heads, pos[:, steps], pos)
    z = z + dense(s, ln(f"{s}/layer_norm_2", z))
    i = 0
    while f"{P}/~/self_attention{'' if i == 0 else f'_{i}'}/layer_norm" in t:
        s = f"{P}/~/self_attention{'' if i == 0 else f'_{i}'}"
        h = ln(f"{s}/layer_norm", z)
        z = z + attention(s, h, h, proc, self_heads, pos[:, steps], pos[:, steps])
        z = z + dense(s, ln(f"{s}/layer_norm_1", z))
        i += 1
    return lin(f"{P}/~/logits", ln(f"{P}/layer_norm", z))


def test_copy_task_form_converts_with_parity_and_saves_exactly(tmp_path):
    """The released copy-task architecture (one absolute table of max_context_length + 1 rows) at a tiny size."""
    m, n = 12, 5
    tree = official_tree(vocab=11, channels=8, latent_channels=12, layers=2, tables=[m + 1], cross_w=2, self_w=3)
    model = convert_tree_to_model(tree, infer_config(tree, num_latents=n, num_cross_attend_heads=2,
                                                     num_self_attend_heads=3))
    c = model.config
    assert (c.max_context_length, c.position_table_size, c.num_channels, c.num_latent_channels) == (m, None, 8, 12)
    assert (c.cross_attend_widening_factor, c.self_attend_widening_factor, c.num_self_attend_layers) == (2, 3, 2)
    ids = np.random.default_rng(1).integers(0, 11, (2, m))
    idxs = np.broadcast_to(np.arange(1, m + 1)[None, :, None], (2, m, 1))
    want = reference_logits(tree, ids, idxs, n, 2, 3)
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).double().numpy()
    assert np.abs(got - want).max() < 1e-4
    model.save_pretrained(tmp_path / "out")
    loaded = from_pretrained(tmp_path / "out")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_text_table_plus_two_and_grid_tables():
    """+2 tables (text datasets reserve an SOS row) keep their size; three tables are an ImageNet-style grid."""
    tree = official_tree(vocab=7, channels=8, latent_channels=8, layers=1, tables=[12 + 2], cross_w=1, self_w=1)
    model = convert_tree_to_model(tree, infer_config(tree, max_context_length=12, num_latents=4,
                                                     num_cross_attend_heads=2, num_self_attend_heads=2))
    assert model.config.position_table_size == 14
    grid = official_tree(vocab=7, channels=8, latent_channels=8, layers=1, tables=[3 + 2, 2 + 2, 3 + 2], cross_w=1,
                         self_w=1)  # official (x, y, channel) tables of a 3 wide, 2 high RGB image
    model = convert_tree_to_model(grid, infer_config(grid, num_latents=4, num_cross_attend_heads=2,
                                                     num_self_attend_heads=2))
    assert model.config.position_grid == (2, 3, 3) and model.config.max_context_length == 19
    ids = np.random.default_rng(2).integers(0, 7, (1, 19))
    # dataset.py: pixel-raster events (y, x, channel) with 1-based (x, y, channel) indices, +1 after SOS at (1, 1, 1)
    idxs = np.array([[(1, 1, 1)] + [(x + 2, y + 2, ch + 2) for y in range(2) for x in range(3) for ch in range(3)]])
    want = reference_logits(grid, ids, idxs, 4, 2, 2)
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).double().numpy()
    assert np.abs(got - want).max() < 1e-4


def test_released_copy_task_131072_names_and_shapes():
    """``random_mirrored_131072`` at full size (shape-only arrays): every name and shape matches, 223,976,707
    parameters (the official count, 134,218,752 of them the frozen 131,073 x 1024 sinusoid table)."""
    full = official_tree(vocab=259, channels=1024, latent_channels=1024, layers=6, tables=[131_073], shapes_only=True)
    config = infer_config(full, sweep="random_mirrored_131072")
    assert (config.max_context_length, config.position_table_size, config.num_latents) == (131_072, None, 1024)
    with torch.device("meta"):
        model = PerceiverAR(config)
    check_tree(full, official_rows(config), {k: v.shape for k, v in model.state_dict().items()}, what="t")
    assert model.num_parameters() == 223_976_707


def test_every_problem_is_listed_at_once(tmp_path):
    tree = official_tree(vocab=11, channels=8, latent_channels=8, layers=2, tables=[13], cross_w=1, self_w=1)
    del tree[f"{P}/~/self_attention_1/dense/linear_1"]
    tree[f"{P}/~/extra"] = {"w": np.zeros((2, 2), np.float32)}
    tree[f"{P}/~/linear"]["b"] = np.zeros(7, np.float32)
    config = infer_config(tree, num_latents=4, num_cross_attend_heads=2, num_self_attend_heads=2)
    with pytest.raises(ConfigError) as info:
        convert_tree_to_model(tree, config)
    msg = str(info.value)
    assert "\n" not in msg
    assert "2 missing: perceiver_ar/~/self_attention_1/dense/linear_1/b, perceiver_ar/~/self_attention_1/dense" in msg
    assert "1 unexpected: perceiver_ar/~/extra/w" in msg
    assert "1 mis-shaped: perceiver_ar/~/linear/b [7] (model: [8])" in msg
    assert "2 self-attention layers" in msg


def test_npz_file_and_bad_overrides(tmp_path):
    tree = official_tree(vocab=11, channels=8, latent_channels=8, layers=1, tables=[13], cross_w=1, self_w=1)
    path = tmp_path / "params.npz"
    np.savez(path, **{f"{m}/{p}": a for m, ps in tree.items() for p, a in ps.items()})
    model = convert_perceiver_ar_file(path, num_latents=4, num_cross_attend_heads=2, num_self_attend_heads=2)
    assert model.config.max_context_length == 12
    with pytest.raises(ConfigError, match="num_channels cannot be overridden"):
        convert_perceiver_ar_file(path, num_channels=16)
    with pytest.raises(ConfigError, match="sweep"):
        convert_perceiver_ar_file(path, sweep="pg19")
    rotary = {k: v for k, v in tree.items() if not k.startswith(f"{P}/~/embed_1")}
    with pytest.raises(ConfigError, match="max_context_length"):
        infer_config(rotary)


def test_rotary_tree_converts_with_parity():
    """A rotary tree (no position table; released settings: fraction 0.5, max_wavelength = context)."""
    m, n = 12, 5
    tree = official_tree(vocab=11, channels=16, latent_channels=16, layers=2, tables=[], cross_w=2, self_w=2)
    model = convert_tree_to_model(tree, infer_config(tree, max_context_length=m, num_latents=n,
                                                     num_cross_attend_heads=2, num_self_attend_heads=2))
    assert model.config.position_encoding == "rotary" and model.config.rotary_fraction == 0.5
    ids = np.random.default_rng(4).integers(0, 11, (2, m))
    idxs = np.broadcast_to(np.arange(1, m + 1)[None, :, None], (2, m, 1))
    want = reference_logits(tree, ids, idxs, n, 2, 2, rotary=(0.5, m))
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).double().numpy()
    assert np.abs(got - want).max() < 1e-4


def test_cli_converts_a_pickle_and_reports_problems_in_one_line(tmp_path, capsys):
    import pickle

    from perceivers.cli.main import main

    tree = official_tree(vocab=11, channels=8, latent_channels=8, layers=1, tables=[13], cross_w=1, self_w=1)
    path = tmp_path / "params.pickle"
    path.write_bytes(pickle.dumps({"params": tree, "state": {}}))
    args = ["convert", "perceiver-ar", str(path), str(tmp_path / "out"), "--num-latents", "4",
            "--num-cross-attend-heads", "2", "--num-self-attend-heads", "2"]
    assert main(args) == 0
    assert "converted" in capsys.readouterr().out
    assert from_pretrained(tmp_path / "out").config.max_context_length == 12
    del tree[f"{P}/~/logits"]
    path.write_bytes(pickle.dumps(tree))
    assert main([*args[:3], str(tmp_path / "out2"), *args[4:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 missing: perceiver_ar/~/logits/b, perceiver_ar/~/logits/w" in err


def test_jaxline_checkpoint_dill_is_refused_with_the_export_recipe(tmp_path):
    """The released checkpoint.dill names JAX/optax code; the restricted unpickler refuses it and says what to do."""
    path = tmp_path / "checkpoint.dill"
    path.write_bytes(b"\x80\x02cjax._src.device_array\n_reconstruct_device_array\nq\x00.")
    with pytest.raises(ConfigError, match="refusing to unpickle jax.*export its 'params' to an .npz"):
        convert_perceiver_ar_file(path)
