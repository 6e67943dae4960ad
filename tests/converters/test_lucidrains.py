"""``perceivers convert lucidrains``: random small models of the real peer (perceiver-pytorch 0.11.0, a dev
dependency) converted and compared on outputs, plus the config options the conversion needs and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from perceiver_pytorch import Perceiver
from perceiver_pytorch import PerceiverIO as PeerIO

from perceivers import PerceiverIOConfig, from_pretrained
from perceivers.cli.main import main
from perceivers.converters.lucidrains import (
    convert_lucidrains_state_dict,
    fourier_permutation,
)
from perceivers.core.errors import ConfigError
from perceivers.decoders import DecoderConfig
from perceivers.encoders import EncoderConfig
from perceivers.layers.blocks import MLP, CrossAttentionBlock

TOL = 1e-5
IMAGE = {"max_freq": 10, "num_freq_bands": 3, "image_size": [5, 7], "cross_heads": 2, "latent_heads": 2}


def _perceiver(**kw) -> Perceiver:
    args = {"num_freq_bands": 3, "depth": 3, "max_freq": 10.0, "input_channels": 3, "num_latents": 6, "latent_dim": 16,
                "cross_heads": 2, "latent_heads": 2, "cross_dim_head": 8, "latent_dim_head": 12, "num_classes": 5,
                "self_per_cross_attn": 2}
    return Perceiver(**{**args, **kw}).eval()


def _peer_io(**kw) -> PeerIO:
    args = {"depth": 3, "dim": 7, "queries_dim": 9, "num_latents": 5, "latent_dim": 16, "cross_heads": 2, "latent_heads": 4,
                "cross_dim_head": 6, "latent_dim_head": 4}
    return PeerIO(**{**args, **kw}).eval()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("tied", [False, True])
def test_perceiver_with_fourier_features_matches_the_peer(tied):
    peer = _perceiver(weight_tie_layers=tied)
    model = convert_lucidrains_state_dict(peer.state_dict(), IMAGE)
    x = torch.randn(2, 5, 7, 3)  # the peer's channels-last images; ours are NCHW
    with torch.no_grad():
        diff = (peer(x) - model(x.permute(0, 3, 1, 2))).abs().max().item()
    assert diff < TOL
    assert model.num_parameters() == _count(peer)  # tied layers are one module each side
    enc = model.config.encoder
    assert (enc.cross_attend_sharing, enc.self_attend_sharing) == (("all_but_first",) * 2 if tied else ("none",) * 2)


@pytest.mark.parametrize("tied", [False, True])
def test_perceiver_on_tokens_with_a_mask_matches_the_peer(tied):
    peer = _perceiver(input_axis=1, input_channels=5, fourier_encode_data=False, depth=4, self_per_cross_attn=1,
                      weight_tie_layers=tied)
    model = convert_lucidrains_state_dict(peer.state_dict(), {"fourier_encode_data": False, "cross_heads": 2,
                                                              "latent_heads": 2})
    x, mask = torch.randn(3, 9, 5), torch.rand(3, 9) > 0.3
    mask[:, 0] = True  # a row with every key masked differs by design (docs: zero attention vs uniform)
    with torch.no_grad():
        diff = (peer(x, mask=mask) - model(x, mask)).abs().max().item()
    assert diff < TOL


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("decoder_ff", [False, True])
def test_perceiver_io_matches_the_peer(tied, decoder_ff):
    peer = _peer_io(weight_tie_layers=tied, decoder_ff=decoder_ff, logits_dim=4 if decoder_ff else None)
    model = convert_lucidrains_state_dict(peer.state_dict(), {"cross_heads": 2, "latent_heads": 4})
    x, mask = torch.randn(2, 11, 7), torch.rand(2, 11) > 0.3
    mask[:, 0] = True
    for queries in (torch.randn(3, 9), torch.randn(2, 4, 9)):  # shared or per-example queries
        with torch.no_grad():
            diff = (peer(x, mask=mask, queries=queries) - model(x, mask, queries=queries)).abs().max().item()
        assert diff < TOL
    assert model.num_parameters() == _count(peer)


def test_converted_models_round_trip_through_config_json(tmp_path):
    peer = _peer_io(weight_tie_layers=False, decoder_ff=False)
    model = convert_lucidrains_state_dict(peer.state_dict(), {"cross_heads": 2, "latent_heads": 4})
    model.save_pretrained(tmp_path / "io")
    again = from_pretrained(tmp_path / "io")
    x, q = torch.randn(2, 6, 7), torch.randn(3, 9)
    with torch.no_grad():
        assert torch.equal(model(x, queries=q), again(x, queries=q))
    saved = json.loads((tmp_path / "io" / "config.json").read_text())["config"]
    assert saved["decoder"]["external_queries"] is True and saved["encoder"]["qkv_bias"] is False
    image = convert_lucidrains_state_dict(_perceiver(weight_tie_layers=True).state_dict(), IMAGE)
    assert PerceiverIOConfig.from_dict(image.config.to_dict()) == image.config


def test_cli_converts_a_saved_state_dict(tmp_path, capsys):
    peer = _perceiver()
    torch.save(peer.state_dict(), tmp_path / "peer.pt")
    assert main(["convert", "lucidrains", str(tmp_path / "peer.pt"), str(tmp_path / "out"),
                 "--config", json.dumps(IMAGE)]) == 0
    x = torch.randn(1, 5, 7, 3)
    with torch.no_grad():
        assert (peer(x) - from_pretrained(tmp_path / "out")(x.permute(0, 3, 1, 2))).abs().max() < TOL
    (tmp_path / "settings.json").write_text(json.dumps({**IMAGE, "max_freq": 10.5}))
    assert main(["convert", "lucidrains", str(tmp_path / "peer.pt"), str(tmp_path / "bad"),
                 "--config", str(tmp_path / "settings.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_freq=10.5" in err[0]
    assert main(["convert", "lucidrains", str(tmp_path / "peer.pt"), str(tmp_path / "bad"), "--config", "{bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].count("--config") == 1 and "not valid JSON" in err[0]
    torch.save({"model": peer}, tmp_path / "pickled.pt")  # a pickled module, not a state dict: refused unread
    assert main(["convert", "lucidrains", str(tmp_path / "pickled.pt"), str(tmp_path / "bad")]) == 2
    assert "weights_only" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("peer_kwargs", "settings", "match"), [
    ({"attn_residual": True}, IMAGE, "attn_residual"),
    ({}, {**IMAGE, "inverted_cross_attn": True}, "inverted_cross_attn"),
    ({}, {**IMAGE, "input_axis": 3}, "input_axis=3"),
    ({}, {k: v for k, v in IMAGE.items() if k != "image_size"}, "image_size"),
    ({}, {k: v for k, v in IMAGE.items() if k != "num_freq_bands"}, "num_freq_bands or input_channels"),
    ({}, {**IMAGE, "latent_heads": 5}, "latent_heads=5"),
    ({}, {**IMAGE, "heads": 2}, r"unknown setting\(s\) \['heads'\]"),
    ({"final_classifier_head": False}, IMAGE, "final_classifier_head"),
])
def test_what_cannot_be_expressed_is_refused_by_its_peer_setting(peer_kwargs, settings, match):
    with pytest.raises(ConfigError, match=match):
        convert_lucidrains_state_dict(_perceiver(**peer_kwargs).state_dict(), settings)


def test_mismatched_files_list_every_key():
    state = _perceiver(weight_tie_layers=True).state_dict()
    with pytest.raises(ConfigError, match="tied but they differ"):
        convert_lucidrains_state_dict({**state, "layers.2.cross_attn.norm.bias": torch.ones(16)},
                                      {**IMAGE, "weight_tie_layers": True})
    state = _peer_io().state_dict()
    del state["decoder_cross_attn.fn.to_out.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match=r"missing decoder_cross_attn\.fn\.to_out\.bias; unexpected extra\.weight"):
        convert_lucidrains_state_dict(state, {"cross_heads": 2, "latent_heads": 4})


def test_fourier_permutation_maps_the_peer_layout_to_the_official_one():
    # data (2 channels), 2 axes, 2 bands: peer [d0 d1 | s00 s01 c00 c01 x0 | s10 s11 c10 c11 x1]
    assert fourier_permutation(2, 2, 2).tolist() == [0, 1, 6, 11, 2, 3, 7, 8, 4, 5, 9, 10]


def test_new_layer_options_and_their_defaults():
    mlp = MLP(4, widening_factor=2, activation="geglu")
    assert mlp.fc1.weight.shape == (16, 4)  # values and gates
    x = torch.randn(3, 4)
    a, g = mlp.fc1(x).chunk(2, dim=-1)
    assert torch.allclose(mlp(x), mlp.fc2(a * torch.nn.functional.gelu(g)))
    block = CrossAttentionBlock(q_channels=4, kv_channels=6, qkv_bias=False, use_mlp=False)
    names = {n for n, _ in block.named_parameters()}
    assert "attention.q_proj.bias" not in names and "attention.o_proj.bias" in names
    assert not any(n.startswith("mlp") for n in names)
    default = CrossAttentionBlock(q_channels=4, kv_channels=6)
    assert _count(default) - _count(block) == 3 * 6 + 2 * 4 + _count(default.mlp)  # q/k/v biases, mlp_norm, mlp


@pytest.mark.parametrize(("cls", "fields", "match"), [
    (EncoderConfig, {"self_attend_sharing": "some"}, "self_attend_sharing"),
    (EncoderConfig, {"qkv_bias": 1}, "qkv_bias"),
    (DecoderConfig, {"type": "classification", "projection_norm": True}, "projection_norm"),
    (DecoderConfig, {"type": "basic", "external_queries": True}, "position_encoding"),
    (DecoderConfig, {"type": "projection", "external_queries": True}, "external_queries"),
])
def test_new_config_options_are_validated(cls, fields, match):
    with pytest.raises((ConfigError, TypeError), match=match):
        cls(**fields)


def test_external_queries_are_checked():
    peer = _peer_io()
    model = convert_lucidrains_state_dict(peer.state_dict(), {"cross_heads": 2, "latent_heads": 4})
    x = torch.randn(2, 6, 7)
    with pytest.raises(TypeError, match="pass queries"):
        model(x)
    with pytest.raises(ValueError, match=r"queries must have shape \(O, 9\) or \(B=2, O, 9\)"):
        model(x, queries=torch.randn(3, 8))
