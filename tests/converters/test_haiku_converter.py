"""Official Haiku parameter trees -> our models: names, transforms, kernel orientation, safe unpickling."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perceivers.converters import haiku as hk
from perceivers.core.errors import ConfigError
from perceivers.models import create_model
from perceivers.preprocessors.image import tf_same_padding

SMALL = {"encoder": {"num_latents": 4, "num_latent_channels": 16, "num_blocks": 2, "num_self_attends_per_block": 2,
                     "num_self_attend_heads": 2},
         "decoder": {"num_query_channels": 16, "num_outputs": 5}}


def _official_tree(model) -> dict[str, dict[str, np.ndarray]]:
    """Random arrays in the official layouts (Linear w [in, out], conv HWIO, BN [1,1,1,C]) for every
    module of the model's table, built from our shapes with the inverse transforms."""
    rng = np.random.default_rng(0)
    state = model.state_dict()
    tree: dict[str, dict[str, np.ndarray]] = {}
    for module, ours, kind in hk.model_rows(model.config):
        params = tree.setdefault(module, {})
        for param, suffix in hk.KIND_PARAMS[kind].items():
            key = f"{ours}.{suffix}" if suffix else ours
            if key not in state:
                continue
            shape = tuple(state[key].shape)
            if kind == "linear" and param == "w":
                shape = shape[::-1]
            elif kind == "conv" and param == "w":
                o, i, h, w = shape
                shape = (h, w, i, o)
            elif kind == "batchnorm":
                shape = (1, 1, 1, shape[0])
            value = rng.standard_normal(shape).astype(np.float32)
            params[param] = np.abs(value) + 0.5 if param == "average" else value
        if kind == "ema":
            params.update(hidden=np.zeros_like(params["average"]), counter=np.array(7, dtype=np.int32))
    return tree


class FlatMapping(dict):
    """Pickles under Haiku's class path, as the official files do."""

    def __reduce__(self):
        return FlatMapping, (dict(self),)


@pytest.fixture()
def haiku_module(monkeypatch):
    """Fake ``haiku._src.data_structures`` (and parents) so the pickle names Haiku's class path."""
    for name in ("haiku", "haiku._src", "haiku._src.data_structures"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(FlatMapping, "__module__", "haiku._src.data_structures")
    mod = sys.modules["haiku._src.data_structures"]
    mod.FlatMapping = FlatMapping
    sys.modules["haiku"]._src = sys.modules["haiku._src"]
    sys.modules["haiku._src"].data_structures = mod
    return mod


def _write(path, tree, state=None):
    params = FlatMapping({m: FlatMapping(p) for m, p in tree.items()})
    obj = {"params": params, "state": FlatMapping(state or {})} if state is not None else params
    path.write_bytes(pickle.dumps(obj))


@pytest.mark.parametrize("name", ["perceiver-io-imagenet-fourier", "perceiver-io-imagenet-learned",
                                  "perceiver-io-imagenet-conv"])
def test_official_tree_converts_exactly(tmp_path, haiku_module, name):
    prep = {"preprocessor": {"image_size": (16, 16)}} if name.endswith("learned") else {}
    model = create_model(name, **SMALL, **prep)
    tree = _official_tree(model)
    state_modules = {m: tree.pop(m) for m in list(tree) if m.endswith("_ema")}
    _write(tmp_path / "ckpt.pystate", tree, state_modules)
    assert hk.guess_model_name(tree) == name
    converted = hk.convert_haiku_file(tmp_path / "ckpt.pystate", **SMALL, **prep)
    ours = converted.state_dict()
    q = tree["perceiver_encoder/~/cross_attention/attention/linear"]
    assert torch.equal(ours["encoder.cross_attends.0.attention.q_proj.weight"], torch.from_numpy(q["w"]).T)
    ln = tree["perceiver_encoder/~/self_attention_1/layer_norm_1"]
    assert torch.equal(ours["encoder.self_attends.1.mlp_norm.bias"], torch.from_numpy(ln["offset"]))
    query = tree["classification_decoder/~/basic_decoder/~/trainable_position_encoding"]["pos_embs"]
    assert torch.equal(ours["decoder.query_pos.pos_embs"], torch.from_numpy(query))
    if name.endswith("conv"):
        bn = "image_preprocessor/~/conv2_d_downsample/~/batchnorm"
        assert torch.equal(ours["preprocessor.conv.batchnorms.0.weight"], torch.from_numpy(tree[bn]["scale"]).flatten())
        assert torch.equal(ours["preprocessor.conv.batchnorms.0.running_var"],
                           torch.from_numpy(state_modules[bn + "/~/var_ema"]["average"]))
    out = converted(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_real_official_names_and_shapes_on_the_released_configs():
    """The released models' tables hold the official module names with the official shapes."""
    rows = {m: (o, k) for m, o, k in hk.model_rows(create_model("perceiver-io-imagenet-conv", device="meta").config)}
    assert rows["image_preprocessor/~/conv2_d_downsample/~/conv"] == ("preprocessor.conv.convs.0", "conv")
    assert rows["perceiver_encoder/~/self_attention_5/attention/linear_3"] == (
        "encoder.self_attends.5.attention.o_proj", "linear")
    assert "perceiver_encoder/~/self_attention_6/layer_norm" not in rows
    learned = hk.model_rows(create_model("perceiver-io-imagenet-learned", device="meta").config)
    assert ("image_preprocessor/~_build_network_inputs/position_encoding_projector/linear",
            "preprocessor.position.projection", "linear") in learned
    # HWIO [7, 7, 3, 64] -> OIHW [64, 3, 7, 7]
    assert hk.transform("conv", "w", np.zeros((7, 7, 3, 64), np.float32)).shape == (64, 3, 7, 7)


def _numpy_conv_hwio(x_hwc: np.ndarray, w_hwio: np.ndarray, stride: int) -> np.ndarray:
    """Independent TF-style SAME cross-correlation in NHWC/HWIO with explicit loops."""
    h, w, _ = x_hwc.shape
    kh, kw, _, o = w_hwio.shape
    (pt, pb), (pl, pr) = tf_same_padding(h, kh, stride), tf_same_padding(w, kw, stride)
    xp = np.pad(x_hwc, ((pt, pb), (pl, pr), (0, 0)))
    oh, ow = -(-h // stride), -(-w // stride)
    out = np.zeros((oh, ow, o), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[i, j] = np.einsum("hwc,hwco->o", patch, w_hwio)
    return out


def test_conv_kernel_orientation_against_numpy_hwio_convolution():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((7, 7, 3, 4)).astype(np.float32)
    kernel[0, :, :, :] += 5.0  # asymmetric: a spatial transpose or flip would be caught
    x = rng.standard_normal((9, 11, 3)).astype(np.float32)
    expected = _numpy_conv_hwio(x, kernel, 2)
    weight = hk.transform("conv", "w", kernel)
    xt = torch.from_numpy(x).permute(2, 0, 1)[None]
    (pt, pb), (pl, pr) = tf_same_padding(9, 7, 2), tf_same_padding(11, 7, 2)
    got = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), weight, stride=2)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    wrong = torch.from_numpy(np.transpose(kernel).copy())  # HF's converter: all axes reversed (O, I, W, H)
    bad = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wrong, stride=2)[0].permute(1, 2, 0).numpy()
    assert np.abs(bad - expected).max() > 1.0


def test_unpickler_refuses_arbitrary_classes(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"m": {"w": Evil()}}))
    with pytest.raises(ValueError, match="refusing to unpickle builtins.print"):
        hk.load_haiku_pickle(tmp_path / "evil.pickle")


def test_mismatches_are_listed_at_once(tmp_path, haiku_module):
    """Missing, unexpected and mis-shaped entries in one error, before any tensor is converted."""
    model = create_model("perceiver-io-imagenet-fourier", **SMALL)
    tree = _official_tree(model)
    del tree["perceiver_encoder/~/self_attention_1/mlp/linear_1"]
    tree["perceiver_encoder/~/self_attention_9/mlp/linear"] = {"w": np.zeros((2, 2), np.float32)}
    tree["classification_decoder/~/basic_decoder/output"]["w"] = np.zeros((3, 3), np.float32)
    del tree["perceiver_encoder/~/cross_attention/layer_norm"]["offset"]
    _write(tmp_path / "p.pickle", tree)
    with pytest.raises(ConfigError) as exc:
        hk.convert_haiku_file(tmp_path / "p.pickle", "perceiver-io-imagenet-fourier", **SMALL)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "2 missing: " in msg and "perceiver_encoder/~/self_attention_1/mlp/linear_1" in msg
    assert "perceiver_encoder/~/cross_attention/layer_norm/offset" in msg
    assert "1 unexpected: perceiver_encoder/~/self_attention_9/mlp/linear/w" in msg
    assert "1 mis-shaped: classification_decoder/~/basic_decoder/output/w [3, 3] (expected [16, 5])" in msg


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        hk.load_haiku_pickle(tmp_path / "nope.pickle")
    (tmp_path / "junk.pickle").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable Haiku parameter pickle"):
        hk.load_haiku_pickle(tmp_path / "junk.pickle")


@pytest.mark.parametrize(("name", "count", "resolution"), [("perceiver-io-imagenet-fourier", "48,440,627", 224),
                                                          ("perceiver-io-imagenet-conv", "48,646,522", 56)])
def test_cli_converts_a_released_size_tree(tmp_path, haiku_module, capsys, name, count, resolution):
    """`perceivers convert haiku` on a full-size tree with the official names and shapes, the model recognised
    (the README's conv example: BatchNorm statistics in the file's state, saved after a build on meta)."""
    from testkit.haiku import haiku_trees

    from perceivers.cli.main import main
    from perceivers.models import from_pretrained

    tree, state = haiku_trees(create_model(name, device="meta"))
    assert tree["perceiver_encoder/~/cross_attention/attention/linear"]["w"].shape == (1024, 261 if resolution == 224
                                                                                        else 64 + 258)
    path = tmp_path / "released.pystate"
    _write(path, tree, state)
    assert main(["convert", "haiku", str(path), str(tmp_path / "out")]) == 0
    assert f"{count} parameters" in capsys.readouterr().out
    loaded = from_pretrained(tmp_path / "out")
    assert loaded.config == create_model(name, device="meta").config
    assert loaded.config.preprocessor.max_resolution == (resolution, resolution)
    assert torch.all(loaded.state_dict()["encoder.latents"] == 0.01)
