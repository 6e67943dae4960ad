"""``perceivers convert hf`` / ``to-hf`` for transformers' ``PerceiverForOpticalFlow``: random-weight HF models
saved with ``save_pretrained``, converted through the CLI, compared on the same frames (HF gets our
:func:`extract_flow_patches` of them, the ``(B, 2, 27, H, W)`` input it expects); float32, CPU."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceivers import PerceiverIOFlow, from_pretrained, get_config  # noqa: E402
from perceivers.cli.main import main  # noqa: E402
from perceivers.converters.hf import convert_hf_folder, convert_to_hf_folder  # noqa: E402
from perceivers.preprocessors.flow import extract_flow_patches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5
TRAIN_SIZE = (6, 10)  # non-square: a transposed position grid or output reshape would show


def _hf_model(hidden_act: str = "gelu", shape_for_attn: str = "kv", dropout: float = 0.1):
    cfg = transformers.PerceiverConfig(
        d_latents=32, num_latents=8, num_blocks=2, num_self_attends_per_block=2, num_self_attention_heads=2,
        num_cross_attention_heads=2, cross_attention_shape_for_attention=shape_for_attn, train_size=list(TRAIN_SIZE),
        hidden_act=hidden_act, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    model = transformers.PerceiverForOpticalFlow(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # every tensor non-trivial, so a mis-mapped one changes the flow
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _frames(size=TRAIN_SIZE, seed: int = 3) -> torch.Tensor:
    return torch.rand(2, 2, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _flows(hf, ours, frames) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        a, b = hf(inputs=extract_flow_patches(frames)).logits, ours(frames)
    assert a.shape == b.shape == (frames.shape[0], *frames.shape[-2:], 2) and a.abs().max() > 1e-3
    return a, b


@pytest.mark.parametrize("shape_for_attn", ["kv", "q"])
def test_hf_compat_matches_and_round_trips(shape_for_attn, tmp_path, capsys):
    hf = _hf_model(shape_for_attn=shape_for_attn)
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "hf", str(tmp_path / "hf"), str(tmp_path / "ours"), "--hf-compat"]) == 0
    ours = from_pretrained(tmp_path / "ours")
    dec = ours.config.decoder
    assert dec.flow_scale_factor == 1.0 and ours.config.activation == "gelu" and dec.num_heads == 1
    assert (dec.qk_channels or 32) == (322 if shape_for_attn == "q" else 32)  # HF's decoder follows the encoder
    a, b = _flows(hf, ours, _frames())
    diff = (a - b).abs().max().item()
    print(f"flow ({shape_for_attn}): HF vs ours (hf-compat) max |diff| {diff:.2e}")
    assert diff <= TOL
    assert main(["convert", "to-hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["architectures"] == ["PerceiverForOpticalFlow"] and cfg["train_size"] == list(TRAIN_SIZE)
    back = transformers.PerceiverForOpticalFlow.from_pretrained(tmp_path / "back").eval()
    a, b = _flows(back, ours, _frames(seed=4))
    diff = (a - b).abs().max().item()
    print(f"flow ({shape_for_attn}): round trip max |diff| {diff:.2e}")
    assert diff <= TOL


def test_faithful_default_is_pixels(tmp_path):
    hf = _hf_model(hidden_act="gelu_pytorch_tanh")
    hf.save_pretrained(tmp_path / "hf")
    ours = convert_hf_folder(tmp_path / "hf")  # official: x20 (pixels), tanh GELU, no attention dropout
    assert ours.config.decoder.flow_scale_factor == 20.0 and ours.config.activation == "gelu_tanh"
    assert ours.config.encoder.attention_dropout_prob == 0.0
    frames = _frames()
    a, b = _flows(hf, ours, frames)
    assert (a * 20 - b).abs().max() <= 20 * TOL and (a - b).abs().max() > 1e-2  # HF = pixels / 20
    ours.save_pretrained(tmp_path / "ours")
    convert_to_hf_folder(tmp_path / "ours", tmp_path / "back")  # same network; HF reports it / 20
    back = transformers.PerceiverForOpticalFlow.from_pretrained(tmp_path / "back").eval()
    a, b = _flows(back, ours, frames)
    assert (a * 20 - b).abs().max() <= 20 * TOL
    exact = _hf_model(hidden_act="gelu")  # exact vs tanh GELU is a real difference
    exact.save_pretrained(tmp_path / "exact")
    a, b = _flows(exact, convert_hf_folder(tmp_path / "exact"), frames)
    assert (a * 20 - b).abs().max() > 20 * TOL


def test_errors_list_bad_keys_and_inexpressible_configs(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    for key, change, expected in (
            ("perceiver.input_preprocessor.conv_after_patches.weight", torch.zeros(64, 27),
             ("shape mismatch", "patches_linear.weight: file (64, 27) vs model (64, 54)")),
            ("perceiver.decoder.decoder.final_layer.bias", None, ("missing", "final_layer.bias (-> decoder.output.bias)"))):
        bad = {k: v for k, v in state.items() if k != key}
        if change is not None:
            bad[key] = change
        save_file(bad, str(weights))
        with pytest.raises(ValueError) as err:
            convert_hf_folder(tmp_path / "hf")
        assert all(text in str(err.value) for text in expected), str(err.value)
    _hf_model().save_pretrained(tmp_path / "ok")
    config = convert_hf_folder(tmp_path / "ok").config
    for change, field in (({"preprocessor": {"patch_size": 5}}, "patch_size"),
                          ({"decoder": {"use_query_residual": True}}, "use_query_residual")):
        PerceiverIOFlow(config.replace(**change)).save_pretrained(tmp_path / field)
        with pytest.raises(ValueError, match=f"PerceiverForOpticalFlow.*{field}"):
            convert_to_hf_folder(tmp_path / field, tmp_path / "never")


def test_full_width_parity(tmp_path):
    """The released widths (2,048 x 512 latents, 16 heads, 322-channel queries, tanh
    GELU, random weights) with 2 of the 24 self-attention layers, on 16 x 24 frames. The 24-layer model at 368 x 496 takes
    minutes on CPU: ``benchmarks/flow_full_size.py`` measures it (README)."""
    cfg = transformers.PerceiverConfig(  # deepmind/optical-flow-perceiver sizes, fewer layers
        num_latents=2048, d_latents=512, d_model=322, num_blocks=1, num_self_attends_per_block=2,
        num_self_attention_heads=16, num_cross_attention_heads=1, train_size=[16, 24],
        hidden_act="gelu_pytorch_tanh", attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.PerceiverForOpticalFlow(cfg).eval()
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():  # HF's init (std 0.02) gives a nearly constant flow: make attention query-dependent
        for name, p in hf.named_parameters():
            unit = 1.0 if "layernorm" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + unit)
    hf.save_pretrained(tmp_path / "hf")
    ours = convert_hf_folder(tmp_path / "hf")
    released = get_config("perceiver-io-flow")
    assert ours.config == released.replace(preprocessor={"image_size": (16, 24), "max_resolution": (16, 24)},
                                           encoder={"num_self_attends_per_block": 2})
    assert ours.num_parameters() == 41_057_134 - 22 * 1_577_984
    a, b = _flows(hf, ours, _frames((16, 24), seed=5)[:1])
    assert a.std(dim=(1, 2)).min() > 1e-2  # the flow varies across pixels
    diff = (a * 20 - b).abs().max().item()
    print(f"flow full width: HF x 20 vs ours (faithful) max |diff| {diff:.2e} px; max |flow| {b.abs().max():.3f} px")
    assert diff <= 20 * TOL
