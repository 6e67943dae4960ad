"""``perceivers convert krasserm``: krasserm's perceiver-io 0.6.0 Perceiver IO state dicts.

perceiver-io pins torch<1.13, so CI cannot install it. Every test therefore builds a state dict with the peer's
exact key names and shapes (written out below from its ``model/core/modules.py``, ``image/classifier.py`` and
``text/{common,mlm}.py``) and checks our converted model against :func:`reference`, an independent forward pass
of the peer's computation written here. Where the real package is importable (``pip install --no-deps
perceiver-io==0.6.0 einops fairscale``), the same tests also check that the written-out keys and shapes are the
real model's and that our converted model matches the real model's outputs (0.6.0 only: later versions moved
the modules).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perceivers import from_pretrained
from perceivers.cli.main import main
from perceivers.converters.krasserm import convert_krasserm_state_dict
from perceivers.core.errors import ConfigError

TOL = 1e-5
IMAGE = {"h": 5, "w": 6, "c": 3, "bands": 3, "latents": 4, "d": 16, "cross_qk": 8, "cross_heads": 2, "self_heads": 2, "per_block": 2,
             "cross_wf": 2, "self_wf": 3, "q_channels": 12, "dec_qk": 10, "dec_heads": 2, "dec_wf": 2, "classes": 7}
TEXT = {"vocab": 50, "seq": 12, "c": 16, "latents": 4, "d": 8, "cross_qk": 8, "cross_heads": 2, "self_heads": 2, "per_block": 2,
            "cross_wf": 1, "self_wf": 1, "dec_heads": 2, "dec_wf": 1}


def _peer():
    """krasserm's model modules, or ``None`` when the package is not installed. Its ``model.core`` package
    imports PyTorch Lightning and torchmetrics for training classes only: absent, they are stubbed while it loads."""
    spec = importlib.util.find_spec("perceiver")  # krasserm's package (without importing its model.core)
    layout = ("core/modules.py", "image/classifier.py", "text/mlm.py")  # 0.6.0's; later versions moved them
    if spec is None or not spec.submodule_search_locations or not all(
            (Path(root) / "model" / f).is_file() for root in spec.submodule_search_locations[:1] for f in layout):
        return None
    stubs = {"pytorch_lightning": types.ModuleType("pytorch_lightning"), "torchmetrics": types.ModuleType("tm"),
             "pytorch_lightning.loggers": types.ModuleType("pytorch_lightning.loggers")}
    stubs["pytorch_lightning"].LightningModule = nn.Module
    stubs["pytorch_lightning.loggers"].TensorBoardLogger = object
    added = [k for k in stubs if k not in sys.modules and importlib.util.find_spec(k.split(".")[0]) is None]
    sys.modules.update({k: stubs[k] for k in added})
    try:
        names = {"image": "image.classifier", "mlm": "text.mlm", "text": "text.common", "config": "core.config",
                 "head": "core.classifier", "text_clf": "text.classifier"}
        return types.SimpleNamespace(**{k: importlib.import_module(f"perceiver.model.{n}") for k, n in names.items()})
    finally:
        for k in added:
            sys.modules.pop(k, None)


PEER = _peer()


# ----------------------------------------------------------------------------- the peer's keys, written out

def _linear(out: int, inp: int, prefix: str) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def _layer(prefix: str, q: int, kv: int | None, qk: int, v: int, wf: int, *, residual: bool = True) -> dict:
    """``CrossAttentionLayer`` (``kv`` given) or ``SelfAttentionLayer``: ``Sequential(Residual(attention),
    Residual(MLP(LayerNorm, Linear, GELU, Linear)))``."""
    a = f"{prefix}.0.module" if residual else f"{prefix}.0"
    keys = ({**_linear(q, 1, f"{a}.q_norm"), **_linear(kv, 1, f"{a}.kv_norm")} if kv else _linear(q, 1, f"{a}.norm"))
    keys = {k: (s[0],) for k, s in keys.items()}  # LayerNorm weight and bias: (C,)
    kv = kv or q
    keys |= {**_linear(qk, q, f"{a}.attention.q_proj"), **_linear(qk, kv, f"{a}.attention.k_proj"),
             **_linear(v, kv, f"{a}.attention.v_proj"), **_linear(q, v, f"{a}.attention.o_proj")}
    keys |= {f"{prefix}.1.module.0.weight": (q,), f"{prefix}.1.module.0.bias": (q,),
             **_linear(wf * q, q, f"{prefix}.1.module.1"), **_linear(q, wf * q, f"{prefix}.1.module.3")}
    return keys


def peer_shapes(cfg: dict, *, kind: str, crosses: int = 1, blocks: int = 1, extra_cross: bool = False,
                extra_self: bool = False, residual: bool = True) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``ImageClassifier`` (``kind='image'``), ``MaskedLanguageModel`` (``'text'``) and
    ``TextClassifier`` (``'text_clf'``) state dicts (encoder ``0.*``, decoder ``1.*``)."""
    d = cfg["d"]
    if kind == "image":
        pos = 2 * (2 * cfg["bands"] + 1)
        kv, keys = cfg["c"] + pos, {"0.input_adapter.position_encoding": (cfg["h"] * cfg["w"], pos)}
    else:
        kv = cfg["c"]
        keys = {"0.input_adapter.txt_embedding.weight": (cfg["vocab"], kv), "0.input_adapter.pos_encoding": (cfg["seq"], kv)}
    for name in ["cross_attn_1", "cross_attn_n"][: 1 + extra_cross]:
        keys |= _layer(f"0.{name}", d, kv, cfg["cross_qk"], cfg["cross_qk"], cfg["cross_wf"])
    for name in ["self_attn_1", "self_attn_n"][: 1 + extra_self]:
        for j in range(cfg["per_block"]):
            keys |= _layer(f"0.{name}.{j}", d, None, d, d, cfg["self_wf"])
    keys["0.latent"] = (cfg["latents"], d)
    qc = cfg["c"] if kind == "text" else cfg["q_channels"]
    qk = qc if kind == "text" else cfg["dec_qk"]
    keys |= _layer("1.cross_attn", qc, d, qk, qk, cfg["dec_wf"], residual=residual)
    if kind != "text":  # a classifier
        keys |= {"1.output_adapter._output_query": (1, qc), **_linear(cfg["classes"], qc, "1.output_adapter.linear")}
    else:
        keys |= {"1.output_adapter._output_query": (cfg["seq"], qc), "1.output_adapter.bias": (cfg["vocab"],)}
    return keys


def fourier(h: int, w: int, bands: int) -> torch.Tensor:
    """The peer's ``ImageInputAdapter`` encoding: ``[y, x, sin(pi f y), sin(pi f x), cos(...), cos(...)]``."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    p = torch.stack([y, x], dim=-1).reshape(h * w, 2)
    grids = [p[:, i:i + 1] * torch.linspace(1.0, n / 2.0, bands) for i, n in enumerate((h, w))]
    return torch.cat([p, *[torch.sin(math.pi * g) for g in grids], *[torch.cos(math.pi * g) for g in grids]], dim=-1)


def random_state(shapes: dict, cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.3 * torch.randn(s, generator=g) for k, s in shapes.items()}
    if "0.input_adapter.position_encoding" in state:
        state["0.input_adapter.position_encoding"] = fourier(cfg["h"], cfg["w"], cfg["bands"])
    return state


# ----------------------------------------------------------------------------- the peer's computation, written out

def _ln(s: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], s[f"{p}.weight"], s[f"{p}.bias"])


def _mha(s: dict, p: str, xq, xkv, heads: int, pad=None):
    q, k, v = (F.linear(t, s[f"{p}.{n}_proj.weight"], s[f"{p}.{n}_proj.bias"]) for n, t in zip("qkv", (xq, xkv, xkv)))
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    logits = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2)
    if pad is not None:
        logits = logits.masked_fill(pad[:, None, None, :], -torch.finfo(logits.dtype).max)
    out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return F.linear(out, s[f"{p}.o_proj.weight"], s[f"{p}.o_proj.bias"])


def _layer_forward(s, p, x, kv, heads, *, residual=True, pad=None):
    a = f"{p}.0.module" if residual else f"{p}.0"
    if kv is None:
        h = _ln(s, f"{a}.norm", x)
        x = x + _mha(s, f"{a}.attention", h, h, heads)
    else:
        att = _mha(s, f"{a}.attention", _ln(s, f"{a}.q_norm", x), _ln(s, f"{a}.kv_norm", kv), heads, pad)
        x = x + att if residual else att
    m = F.linear(_ln(s, f"{p}.1.module.0", x), s[f"{p}.1.module.1.weight"], s[f"{p}.1.module.1.bias"])
    return x + F.linear(F.gelu(m), s[f"{p}.1.module.3.weight"], s[f"{p}.1.module.3.bias"])


def reference(s: dict, cfg: dict, x, *, kind: str, crosses=1, blocks=1, residual=True, pad=None):
    """krasserm's ``PerceiverIO`` forward on state dict ``s``: images ``(B, H, W, C)`` or ids ``(B, L)``."""
    if kind == "image":
        enc = s["0.input_adapter.position_encoding"].expand(x.shape[0], -1, -1)
        inputs = torch.cat([x.reshape(x.shape[0], -1, x.shape[-1]), enc], dim=-1)
    else:
        inputs = s["0.input_adapter.txt_embedding.weight"][x] + s["0.input_adapter.pos_encoding"][: x.shape[1]]
    z = s["0.latent"].expand(x.shape[0], -1, -1)
    cross_n = "cross_attn_n" if "0.cross_attn_n.0.module.q_norm.weight" in s else "cross_attn_1"
    self_n = "self_attn_n" if "0.self_attn_n.0.0.module.norm.weight" in s else "self_attn_1"
    for i in range(blocks):
        if i < crosses:
            z = _layer_forward(s, f"0.{'cross_attn_1' if i == 0 else cross_n}", z, inputs, cfg["cross_heads"], pad=pad)
        for j in range(cfg["per_block"]):
            z = _layer_forward(s, f"0.{'self_attn_1' if i == 0 else self_n}.{j}", z, None, cfg["self_heads"])
    query = s["1.output_adapter._output_query"].expand(x.shape[0], -1, -1)
    out = _layer_forward(s, "1.cross_attn", query, z, cfg["dec_heads"], residual=residual)
    if kind != "text":  # a classifier
        return F.linear(out, s["1.output_adapter.linear.weight"], s["1.output_adapter.linear.bias"]).squeeze(1)
    return (out @ s["0.input_adapter.txt_embedding.weight"].t() + s["1.output_adapter.bias"])[:, : x.shape[1]]


def settings(cfg: dict, **enc) -> dict:
    """The peer config's fields the shapes do not fix (the image's shape included: 5 x 6 is not square)."""
    image = {"image_shape": [cfg["h"], cfg["w"], cfg["c"]]} if "h" in cfg else {}
    return {"encoder": {"num_cross_attention_heads": cfg["cross_heads"], "num_self_attention_heads": cfg["self_heads"],
                        **image, **enc}, "decoder": {"num_cross_attention_heads": cfg["dec_heads"]}}


def _peer_model(kind: str, cfg: dict, layout: dict, residual: bool):
    """The real peer model for ``cfg`` (only where the package is installed)."""
    share = {"num_cross_attention_layers": layout["crosses"], "num_self_attention_blocks": layout["blocks"],
                 "first_cross_attention_layer_shared": not layout["extra_cross"],
                 "first_self_attention_block_shared": not layout["extra_self"], "num_cross_attention_heads": cfg["cross_heads"],
                 "num_self_attention_heads": cfg["self_heads"], "num_self_attention_layers_per_block": cfg["per_block"],
                 "cross_attention_widening_factor": cfg["cross_wf"], "self_attention_widening_factor": cfg["self_wf"],
                 "num_cross_attention_qk_channels": cfg["cross_qk"]}
    dec = {"num_cross_attention_heads": cfg["dec_heads"], "cross_attention_widening_factor": cfg["dec_wf"],
               "cross_attention_residual": residual}
    if kind == "image":
        enc = PEER.image.ImageEncoderConfig(image_shape=(cfg["h"], cfg["w"], cfg["c"]),
                                            num_frequency_bands=cfg["bands"], **share)
        dec = PEER.head.ClassificationDecoderConfig(num_output_query_channels=cfg["q_channels"],
                                                    num_classes=cfg["classes"],
                                                    num_cross_attention_qk_channels=cfg["dec_qk"], **dec)
        config = PEER.config.PerceiverConfig(encoder=enc, decoder=dec, num_latents=cfg["latents"],
                                             num_latent_channels=cfg["d"])
        return PEER.image.ImageClassifier(config).eval()
    enc = PEER.text.TextEncoderConfig(vocab_size=cfg["vocab"], max_seq_len=cfg["seq"], num_input_channels=cfg["c"],
                                        **share)
    if kind == "text_clf":
        dec = PEER.head.ClassificationDecoderConfig(num_output_query_channels=cfg["q_channels"],
                                                    num_classes=cfg["classes"],
                                                    num_cross_attention_qk_channels=cfg["dec_qk"], **dec)
        config = PEER.config.PerceiverConfig(encoder=enc, decoder=dec, num_latents=cfg["latents"],
                                             num_latent_channels=cfg["d"])
        return PEER.text_clf.TextClassifier(config).eval()
    dec = PEER.mlm.TextDecoderConfig(vocab_size=cfg["vocab"], max_seq_len=cfg["seq"], **dec)
    config = PEER.config.PerceiverConfig(encoder=enc, decoder=dec, num_latents=cfg["latents"],
                                         num_latent_channels=cfg["d"])
    return PEER.mlm.MaskedLanguageModel(config).eval()


LAYOUTS = [{"crosses": 1, "blocks": 1, "extra_cross": False, "extra_self": False},
           {"crosses": 3, "blocks": 3, "extra_cross": True, "extra_self": False},   # original Perceiver sharing
           {"crosses": 3, "blocks": 3, "extra_cross": False, "extra_self": True},
           {"crosses": 1, "blocks": 2, "extra_cross": False, "extra_self": True},
           {"crosses": 2, "blocks": 3, "extra_cross": True, "extra_self": True}]  # cross-attends before 2 of 3 blocks


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("residual", [True, False])
def test_image_classifier_matches_the_peer_computation(layout, residual):
    cfg = IMAGE
    shapes = peer_shapes(cfg, kind="image", residual=residual, **layout)
    state = random_state(shapes, cfg)
    model = convert_krasserm_state_dict(state, settings(cfg, num_cross_attention_layers=layout["crosses"],
                                                        num_self_attention_blocks=layout["blocks"]))
    x = torch.randn(2, cfg["h"], cfg["w"], cfg["c"])
    with torch.no_grad():
        ours = model(x.permute(0, 3, 1, 2))
    expected = reference(state, cfg, x, kind="image", crosses=layout["crosses"], blocks=layout["blocks"],
                         residual=residual)
    assert (ours - expected).abs().max() < TOL
    assert model.num_parameters() == sum(math.prod(s) for k, s in shapes.items() if "position_encoding" not in k)
    if PEER is not None:  # the written-out keys are the real model's, and so is the output
        peer = _peer_model("image", cfg, layout, residual)
        assert {k: tuple(v.shape) for k, v in peer.state_dict().items()} == shapes
        peer.load_state_dict(state)
        with torch.no_grad():
            assert (peer(x) - ours).abs().max() < TOL


@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[3]])  # text models have one cross-attend
def test_masked_language_model_matches_the_peer_computation(layout):
    cfg = TEXT
    shapes = peer_shapes(cfg, kind="text", residual=False, **layout)
    state = random_state(shapes, cfg, seed=1)
    model = convert_krasserm_state_dict(state, settings(cfg, num_cross_attention_layers=layout["crosses"],
                                                        num_self_attention_blocks=layout["blocks"]))
    ids = torch.randint(0, cfg["vocab"], (2, 9))
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, -2:] = True  # the peer's pad mask is True at padding; ours marks real tokens
    with torch.no_grad():
        ours = model(ids, ~pad)
    expected = reference(state, cfg, ids, kind="text", crosses=layout["crosses"], blocks=layout["blocks"],
                         residual=False, pad=pad)
    assert (ours - expected)[~pad].abs().max() < TOL  # padded outputs: ours are masked queries (docs)
    if PEER is not None:
        peer = _peer_model("text", cfg, layout, False)
        assert {k: tuple(v.shape) for k, v in peer.state_dict().items()} == shapes
        peer.load_state_dict(state)
        with torch.no_grad():
            assert (peer(ids, pad) - ours)[~pad].abs().max() < TOL


def test_cli_converts_and_refuses_in_one_line(tmp_path, capsys):
    cfg, layout = IMAGE, LAYOUTS[1]
    state = random_state(peer_shapes(cfg, kind="image", **layout), cfg)
    torch.save(state, tmp_path / "peer.pt")
    conf = settings(cfg, num_cross_attention_layers=3, num_self_attention_blocks=3)
    assert main(["convert", "krasserm", str(tmp_path / "peer.pt"), str(tmp_path / "out"),
                 "--config", json.dumps(conf)]) == 0
    x = torch.randn(1, cfg["h"], cfg["w"], cfg["c"])
    with torch.no_grad():
        got = from_pretrained(tmp_path / "out")(x.permute(0, 3, 1, 2))
    assert (got - reference(state, cfg, x, kind="image", crosses=3, blocks=3)).abs().max() < TOL
    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}  # a Lightning checkpoint
    torch.save(lightning, tmp_path / "last.ckpt")
    assert main(["convert", "krasserm", str(tmp_path / "last.ckpt"), str(tmp_path / "out2"),
                 "--config", json.dumps(conf)]) == 0
    conf["encoder"]["num_cross_attention_layers"] = 4  # more cross-attends than blocks
    assert main(["convert", "krasserm", str(tmp_path / "peer.pt"), str(tmp_path / "bad"),
                 "--config", json.dumps(conf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_cross_attention_layers=4" in err[0]
    assert not (tmp_path / "bad").exists()


def test_what_does_not_fit_is_refused():
    cfg = IMAGE
    state = random_state(peer_shapes(cfg, kind="image"), cfg)
    no_shape = settings(cfg)
    del no_shape["encoder"]["image_shape"]
    with pytest.raises(ConfigError, match="image_shape"):  # 30 positions: not square, so the shape is needed
        convert_krasserm_state_dict(state, no_shape)
    with pytest.raises(ConfigError, match="position_encoding is not the Fourier encoding"):
        convert_krasserm_state_dict({**state, "0.input_adapter.position_encoding": torch.zeros(30, 14)},
                                    settings(cfg, image_shape=[5, 6, 3]))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['encoder.heads'\]"):
        convert_krasserm_state_dict(state, settings(cfg, image_shape=[5, 6, 3], heads=2))
    text = random_state(peer_shapes(TEXT, kind="text", residual=False, **LAYOUTS[1]), TEXT)
    with pytest.raises(ConfigError, match="cross-attend once"):
        convert_krasserm_state_dict(text, settings(TEXT, num_cross_attention_layers=3, num_self_attention_blocks=3))
    with pytest.raises(ConfigError, match="Perceiver AR"):
        convert_krasserm_state_dict({"input_adapter.frq_pos_encoding.inv_freq": torch.ones(2)})
    del state["1.cross_attn.1.module.3.bias"]
    with pytest.raises(ConfigError, match=r"missing 1\.cross_attn\.1\.module\.3\.bias"):
        convert_krasserm_state_dict(state, settings(cfg, image_shape=[5, 6, 3]))


def test_num_cross_attends_is_validated_and_kept_at_debug_size():
    from perceivers.encoders import EncoderConfig

    config = EncoderConfig(layout="interleaved", num_blocks=4, num_cross_attends=2, cross_attend_sharing="none")
    assert config.cross_attend_schedule() == [0, 1, -1, -1]
    assert config.debug_size().cross_attend_schedule() == [0, -1]  # still fewer cross-attends than blocks
    for bad in ({"num_cross_attends": 2}, {"layout": "interleaved", "num_blocks": 2, "num_cross_attends": 3}):
        with pytest.raises(ConfigError, match="num_cross_attends"):
            EncoderConfig(**bad)


def test_text_classifier_matches_the_peer_computation():
    cfg, layout = {**TEXT, "q_channels": 12, "dec_qk": 10, "classes": 3}, LAYOUTS[3]
    shapes = peer_shapes(cfg, kind="text_clf", **layout)
    state = random_state(shapes, cfg, seed=2)
    model = convert_krasserm_state_dict(state, settings(cfg, num_self_attention_blocks=layout["blocks"]))
    ids = torch.randint(0, cfg["vocab"], (2, 9))
    with torch.no_grad():
        ours = model(ids)
    assert ours.shape == (2, 3)
    assert (ours - reference(state, cfg, ids, kind="text_clf", blocks=layout["blocks"])).abs().max() < TOL
    if PEER is not None:
        peer = _peer_model("text_clf", cfg, layout, True)
        assert {k: tuple(v.shape) for k, v in peer.state_dict().items()} == shapes
        peer.load_state_dict(state)
        with torch.no_grad():
            assert (peer(ids) - ours).abs().max() < TOL
