"""``perceivers convert hf`` / ``convert to-hf``: tiny random-weight transformers models, saved with
``save_pretrained``, converted through the CLI and compared numerically (float32, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from testkit.cli import cli_error

from perceivers import from_pretrained  # noqa: E402
from perceivers.cli.main import main  # noqa: E402
from perceivers.converters.hf import convert_hf_folder, convert_to_hf_folder  # noqa: E402
from perceivers.tokenizers import BytesTokenizer  # noqa: E402

TOL = 1e-5
FOURIER, LEARNED = "PerceiverForImageClassificationFourier", "PerceiverForImageClassificationLearned"
MLM, SEQ = "PerceiverForMaskedLM", "PerceiverForSequenceClassification"
CONV = "PerceiverForImageClassificationConvProcessing"
HEADS = (FOURIER, MLM, SEQ, LEARNED, CONV)
MAX_LEN = 32
TEXTS = ["bytes: café ☕", "short"]


def _hf_config(head: str, hidden_act: str):
    common = dict(d_latents=32, num_latents=8, num_blocks=2, num_self_attends_per_block=2, num_self_attention_heads=2,
                  hidden_act=hidden_act, num_labels=5)  # attention_probs_dropout_prob stays HF's 0.1
    if head in (MLM, SEQ):
        return transformers.PerceiverConfig(**common, d_model=16, num_cross_attention_heads=2, qk_channels=16,
                                            v_channels=32, max_position_embeddings=MAX_LEN, vocab_size=262)
    return transformers.PerceiverConfig(**common, num_cross_attention_heads=1, image_size=8)


def _hf_model(head: str, hidden_act: str = "gelu"):
    torch.manual_seed(0)
    model = getattr(transformers, head)(_hf_config(head, hidden_act))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # every tensor non-trivial so a mis-mapped one shows
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for name, b in model.named_buffers():  # BatchNorm statistics of the conv head (variance > 0)
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model.eval()


def _outputs(head: str, hf, ours) -> tuple[torch.Tensor, torch.Tensor]:
    """(HF, ours) outputs on a fixed input; MLM restricted to real (non-padded) positions."""
    with torch.no_grad():
        if head in (MLM, SEQ):
            ids, mask = BytesTokenizer().batch(TEXTS, add_special_tokens=True)
            hf_out = hf(inputs=ids, attention_mask=mask.long()).logits
            our_out = ours(ids, mask)
            if head == MLM:
                return hf_out[:, : ids.shape[1]][mask], our_out[mask]
            return hf_out, our_out
        size = 32 if head == CONV else 8  # conv: 32 -> 16 -> 7x7 (HF padding) or 8x8 (TF-SAME) tokens
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))  # NCHW
        return hf(inputs=x).logits, ours(x)


def _max_diff(head: str, hf, ours) -> float:
    a, b = _outputs(head, hf, ours)
    assert a.shape == b.shape and a.abs().max() > 0.1
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for head in HEADS:
        hf = _hf_model(head)
        path = tmp_path_factory.mktemp(head)
        hf.save_pretrained(path)
        out[head] = (hf, path)
    return out


@pytest.mark.parametrize("head", HEADS)
def test_hf_compat_matches_hf_and_round_trips(saved, head, tmp_path, capsys):
    hf, src = saved[head]
    ours_dir, back_dir = tmp_path / "ours", tmp_path / "back"
    assert main(["convert", "hf", str(src), str(ours_dir), "--hf-compat"]) == 0
    ours = from_pretrained(ours_dir)
    assert ours.config.activation == "gelu" and ours.config.encoder.attention_dropout_prob == pytest.approx(0.1)
    diff = _max_diff(head, hf, ours)
    print(f"{head}: HF vs ours (hf-compat) max |diff| {diff:.2e}")
    assert diff <= TOL, f"{head}: {diff:.3e}"
    assert main(["convert", "to-hf", str(ours_dir), str(back_dir)]) == 0
    assert json.loads((back_dir / "config.json").read_text())["architectures"] == [head]
    hf_back = getattr(transformers, head).from_pretrained(back_dir).eval()
    back = _max_diff(head, hf_back, ours)
    print(f"{head}: round trip max |diff| {back:.2e}")
    assert back <= TOL, f"{head} round trip: {back:.3e}"


def test_faithful_default_semantics(saved, tmp_path):
    hf, src = saved[LEARNED]
    ours = convert_hf_folder(src)  # official: no query residual, tanh GELU, attention dropout 0
    assert ours.config.decoder.use_query_residual is False and ours.config.activation == "gelu_tanh"
    assert ours.config.encoder.attention_dropout_prob == 0.0
    ours.save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="query residual"):  # HF cannot express the official decoder
        convert_to_hf_folder(tmp_path / "ours", tmp_path / "back")
    tanh_hf = _hf_model(LEARNED, "gelu_pytorch_tanh")
    tanh_hf.save_pretrained(tmp_path / "learned_tanh")
    assert _max_diff(LEARNED, tanh_hf, convert_hf_folder(tmp_path / "learned_tanh")) > 1e-3  # residual differs
    tanh_hf = _hf_model(FOURIER, "gelu_pytorch_tanh")
    tanh_hf.save_pretrained(tmp_path / "fourier_tanh")
    assert _max_diff(FOURIER, tanh_hf, convert_hf_folder(tmp_path / "fourier_tanh")) <= TOL
    assert _max_diff(FOURIER, saved[FOURIER][0], convert_hf_folder(saved[FOURIER][1])) > TOL  # exact vs tanh GELU


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _cli_error(capsys, src, out) -> str:
    return cli_error(capsys, ["convert", "hf", str(src), str(out)])


def test_errors(saved, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _, src = saved[FOURIER]
    bad = _copy(src, tmp_path / "no_config")
    (bad / "config.json").unlink()
    assert "config.json is missing" in _cli_error(capsys, bad, tmp_path / "o")
    bad = _copy(src, tmp_path / "no_weights")
    (bad / "model.safetensors").unlink()
    assert "model.safetensors is missing" in _cli_error(capsys, bad, tmp_path / "o")
    for arch, message in (("PerceiverModel", "PerceiverModel is not supported yet"),
                          ("PerceiverForX", "unknown HF architecture 'PerceiverForX'")):
        bad = _copy(src, tmp_path / arch)
        cfg = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**cfg, "architectures": [arch]}))
        assert message in _cli_error(capsys, bad, tmp_path / "o")
    state = load_file(str(src / "model.safetensors"))
    key = "perceiver.encoder.self_attends.1.mlp.dense1.weight"
    for name, change, message in (
            ("missing", lambda s: s.pop(key), "missing"),
            ("unexpected", lambda s: s.update({"perceiver.extra": torch.zeros(1)}), "unexpected"),
            ("shape", lambda s: s.update({key: torch.zeros(3, 3)}), "shape mismatch")):
        bad = _copy(src, tmp_path / name)
        s = dict(state)
        change(s)
        save_file(s, str(bad / "model.safetensors"))
        err = _cli_error(capsys, bad, tmp_path / "o")
        assert message in err and ("perceiver.extra" if name == "unexpected" else "self_attends.1") in err
    assert not (tmp_path / "o").exists()


def test_conv_faithful_padding_and_kernel_transpose(saved, tmp_path):
    hf, src = saved[CONV]
    faithful, compat = convert_hf_folder(src), convert_hf_folder(src, hf_compat=True)
    assert faithful.config.preprocessor.conv_padding == "tf_same" and compat.config.preprocessor.conv_padding == "hf"
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert faithful.preprocessor(x)[2] == (8, 8) and compat.preprocessor(x)[2] == (7, 7)
        assert faithful.preprocessor.grid(224, 224) == (56, 56) and compat.preprocessor.grid(224, 224) == (55, 55)
        assert torch.isfinite(faithful(x)).all()
    assert _max_diff(CONV, hf, faithful) > 1e-3  # one-pixel shift and other token grid
    faithful.save_pretrained(tmp_path / "faithful")
    with pytest.raises(ValueError, match="conv_padding"):  # HF cannot express TF-SAME padding
        convert_to_hf_folder(tmp_path / "faithful", tmp_path / "back")
    kernel = hf.state_dict()["perceiver.input_preprocessor.convnet.conv.weight"]
    assert not torch.equal(kernel, kernel.transpose(2, 3))  # random 7x7 kernels are asymmetric
    assert main(["convert", "hf", str(src), str(tmp_path / "undone"), "--undo-hf-kernel-transpose"]) == 0
    undone = from_pretrained(tmp_path / "undone").preprocessor.conv.convs[0].weight
    assert torch.equal(undone, kernel.transpose(2, 3)) and torch.equal(faithful.preprocessor.conv.convs[0].weight, kernel)
    with pytest.raises(ValueError, match="only to PerceiverForImageClassificationConvProcessing"):
        convert_hf_folder(saved[FOURIER][1], undo_hf_kernel_transpose=True)


def test_full_size_fourier_parity(tmp_path):
    """Released-size HF Fourier classifier (random weights, tanh GELU, no attention dropout) at 32x32."""
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(  # deepmind/vision-perceiver-fourier sizes: 48.4 M parameters
        num_latents=512, d_latents=1024, num_blocks=8, num_self_attends_per_block=6, num_cross_attention_heads=1,
        num_self_attention_heads=8, num_labels=1000, image_size=224, hidden_act="gelu_pytorch_tanh",
        attention_probs_dropout_prob=0.0)
    hf = transformers.PerceiverForImageClassificationFourier(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = convert_hf_folder(tmp_path / "hf")
    assert ours.config.encoder.num_self_attends_per_block == 6 and ours.num_parameters() == 48_440_627
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = hf(inputs=x).logits, ours(x)
    diff = (a - b).abs().max().item()
    print(f"full-size Fourier: HF vs ours max |diff| {diff:.2e} (|logits| max {a.abs().max().item():.2e})")
    assert a.shape == b.shape == (1, cfg.num_labels) and diff <= TOL, diff
