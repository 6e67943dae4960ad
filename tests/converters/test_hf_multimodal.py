"""``convert hf`` / ``convert to-hf`` for ``PerceiverForMultimodalAutoencoding``: random-weight transformers
models saved with ``save_pretrained``, converted through the CLI, compared on subsampled decoding (HF cannot
decode without subsampling), and written back for transformers' ``from_pretrained``."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceivers import from_pretrained  # noqa: E402
from perceivers.cli.main import main  # noqa: E402
from perceivers.converters.hf import convert_hf_folder, convert_to_hf_folder  # noqa: E402
from perceivers.models import create_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
HEAD = "PerceiverForMultimodalAutoencoding"
SMALL = dict(num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=2, num_self_attention_heads=2,
             num_cross_attention_heads=1, num_frames=2, audio_samples_per_frame=16, samples_per_patch=4, image_size=2,
             output_shape=[1, 2, 8, 12], output_num_channels=24, num_labels=5, _label_trainable_num_channels=16)


def _hf_model(hidden_act: str = "gelu", **overrides):
    torch.manual_seed(0)
    model = transformers.PerceiverForMultimodalAutoencoding(
        transformers.PerceiverConfig(**{**SMALL, **overrides}, hidden_act=hidden_act))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # every tensor non-trivial, so a mis-mapped one shows
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _inputs(frames=2, height=8, width=12, samples=32, classes=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    video = torch.rand(2, frames, height, width, 3, generator=gen)  # ours: (B, T, H, W, C)
    audio = torch.randn(2, samples, generator=gen)
    label = torch.nn.functional.one_hot(torch.tensor([1, 3]), classes).float()
    return {"image": video, "audio": audio, "label": label}


def _compare(hf, ours, points, inputs=None) -> dict[str, float]:
    """Max |HF - ours| per modality on subsampled decoding (HF: video (B, T, C, H, W), audio (B, S, 1))."""
    x = inputs or _inputs()
    hf_x = {"image": x["image"].permute(0, 1, 4, 2, 3), "audio": x["audio"][..., None], "label": x["label"]}
    with torch.no_grad():
        a = hf(inputs=hf_x, subsampled_output_points={**points, "label": None}).logits
        b = ours(x, subsampled_output_points=points)
    diffs = {}
    for name in ("audio", "image", "label"):
        assert a[name].shape == b[name].shape and a[name].abs().max() > 0.05, name
        diffs[name] = (a[name] - b[name]).abs().max().item()
    return diffs


POINTS = {"image": torch.arange(0, 192, 5), "audio": torch.tensor([0, 3, 7])}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    hf = _hf_model()
    path = tmp_path_factory.mktemp("hf_multimodal")
    hf.save_pretrained(path)
    return hf, path


def test_hf_compat_matches_hf_and_round_trips(saved, tmp_path):
    hf, src = saved
    assert main(["convert", "hf", str(src), str(tmp_path / "ours"), "--hf-compat"]) == 0
    ours = from_pretrained(tmp_path / "ours")
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert ours.config.activation == "gelu" and ours.config.preprocessor.modalities["label"].mask_prob == 1.0
    diffs = _compare(hf, ours, POINTS)
    print(f"{HEAD} small, HF vs ours (hf-compat): {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    full = {"image": torch.arange(192), "audio": torch.arange(8)}  # every query, in HF's only working mode
    assert max(_compare(hf, ours, full).values()) <= TOL
    assert main(["convert", "to-hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == [HEAD]
    back = transformers.PerceiverForMultimodalAutoencoding.from_pretrained(tmp_path / "back").eval()
    diffs = _compare(back, ours, POINTS)
    print(f"{HEAD} small, round trip: {diffs}")
    assert max(diffs.values()) <= TOL, diffs


def test_faithful_default_is_tanh_gelu(saved, tmp_path):
    hf, src = saved
    faithful = convert_hf_folder(src)
    assert faithful.config.activation == "gelu_tanh" and faithful.config.encoder.attention_dropout_prob == 0.0
    assert max(_compare(hf, faithful, POINTS).values()) > TOL  # HF's exact GELU differs
    tanh = _hf_model("gelu_pytorch_tanh")
    tanh.save_pretrained(tmp_path / "tanh")
    assert max(_compare(tanh, convert_hf_folder(tmp_path / "tanh"), POINTS).values()) <= TOL


def test_to_hf_refuses_what_hf_hard_codes(tmp_path):
    model = create_model("perceiver-io-multimodal-debug")  # 4 Fourier bands: HF hard-codes 192 / 32
    model.save_pretrained(tmp_path / "debug")
    with pytest.raises(ValueError, match="bands"):
        convert_to_hf_folder(tmp_path / "debug", tmp_path / "out")
    cfg = create_model("perceiver-io-multimodal-kinetics", device="meta").config
    mods = cfg.preprocessor.modalities
    renamed = cfg.replace(preprocessor={"modalities": {"video": mods["image"], "audio": mods["audio"],
                                                       "label": mods["label"]}})
    from perceivers.converters.hf import ours_config_to_hf

    with pytest.raises(ValueError, match="hard-codes the modalities"):
        ours_config_to_hf(renamed)
    hf = ours_config_to_hf(cfg)  # the released configuration is expressible
    assert (hf["num_frames"], hf["audio_samples_per_frame"], hf["image_size"], hf["output_shape"]) == \
        (16, 1920, 56, [1, 16, 224, 224])


def test_missing_and_misshaped_keys_listed(saved, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _, src = saved
    state = load_file(str(src / "model.safetensors"))

    def error(change) -> str:
        bad = dict(state)
        change(bad)
        out = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        (out / "config.json").write_text((src / "config.json").read_text())
        save_file(bad, str(out / "model.safetensors"))
        capsys.readouterr()
        assert main(["convert", "hf", str(out), str(tmp_path / "o")]) == 2
        return capsys.readouterr().err

    err = error(lambda s: (s.pop("perceiver.input_preprocessor.mask.label"), s.pop("perceiver.decoder.padding.audio"),
                           s.update({"perceiver.decoder.padding.video": torch.zeros(1, 2)})))
    assert all(k in err for k in ("missing", "perceiver.input_preprocessor.mask.label", "perceiver.decoder.padding.audio",
                                  "unexpected", "perceiver.decoder.padding.video"))
    err = error(lambda s: s.update({"perceiver.decoder.padding.image": torch.zeros(1, 3),
                                    "perceiver.input_preprocessor.padding.label": torch.zeros(2, 2)}))
    assert "shape mismatch" in err and "decoder.query_padding.image" in err and "preprocessor.padding.label" in err
    assert not (tmp_path / "o").exists()


def test_full_size_parity(tmp_path):
    """Released sizes (19,858,855 parameters, 16x224x224 query grid, 30,720 samples) on a 16x16x16 video,
    every 512th pixel and every 16th audio patch of the full grids (the full 16x224x224 input is measured by
    ``benchmarks/hf_multimodal_parity.py``)."""
    torch.manual_seed(0)
    hf = transformers.PerceiverForMultimodalAutoencoding(transformers.PerceiverConfig(
        num_latents=784, d_latents=512, num_blocks=1, num_self_attends_per_block=8, num_self_attention_heads=8,
        num_cross_attention_heads=1, num_labels=700, hidden_act="gelu_pytorch_tanh",
        attention_probs_dropout_prob=0.0)).eval()  # converter sizes; image_size 56, output_shape [1, 16, 224, 224]
    hf.save_pretrained(tmp_path / "hf")
    ours = convert_hf_folder(tmp_path / "hf")
    assert ours.num_parameters() == 19_858_855
    assert ours.config == create_model("perceiver-io-multimodal-kinetics", device="meta").config
    x = {k: v[:1] for k, v in _inputs(frames=16, height=16, width=16, samples=30720, classes=700).items()}
    diffs = _compare(hf, ours, {"image": torch.arange(0, 16 * 224 * 224, 512), "audio": torch.arange(0, 1920, 16)}, x)
    print(f"{HEAD} full size, HF vs ours: {diffs}")
    assert max(diffs.values()) <= TOL, diffs
