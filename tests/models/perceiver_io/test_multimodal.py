"""Multimodal Perceiver IO autoencoder: counts, patches, padding and masking, sorted order, generic names,
subsampled and chunked decoding, errors, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from perceivers import (
    ModalityConfig,
    MultimodalPreprocessorConfig,
    PerceiverIOMultimodal,
    from_pretrained,
)
from perceivers.layers.position import fourier_features, grid_positions
from perceivers.models import create_model, get_config
from perceivers.preprocessors.modality import video_space_to_depth

pytestmark = pytest.mark.usefixtures("one_thread")

DEBUG = "perceiver-io-multimodal-debug"


def _inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(batch, 2, 8, 8, 3, generator=gen), "audio": torch.randn(batch, 64, generator=gen),
            "label": torch.nn.functional.one_hot(torch.arange(batch) % 5, 5).float()}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(DEBUG).eval()


def test_released_counts_and_widths():
    m = create_model("perceiver-io-multimodal-kinetics", device="meta")
    assert m.num_parameters() == 19_858_855
    c = m.config.preprocessor
    assert list(c.modalities) == ["audio", "image", "label"]
    assert (c.input_width, m.config.decoder.query_width(c.modalities)) == (704, 1026)
    assert {n: tuple(p.shape) for n, p in m.preprocessor.padding.items()} == \
        {"audio": (1, 303), "image": (1, 461), "label": (1, 4)}
    assert {n: tuple(p.shape) for n, p in m.decoder.query_padding.items()} == \
        {"audio": (1, 641), "image": (1, 831), "label": (1, 2)}
    assert all(tuple(p.shape) == (1, 704) for p in m.preprocessor.mask_token.values())
    assert {n: mc.input_channels for n, mc in c.modalities.items()} == {"audio": 401, "image": 243, "label": 700}
    # 1,920 audio patches + 16x56x56 video patches + 1 label = 52,097 tokens (the paper's Tab. 5 prints 50,657,
    # which would need 480 audio patches; the released 303-wide audio padding fixes 16-sample patches).
    assert [math.prod(mc.patch_grid) for mc in c.modalities.values()] == [1920, 50_176, 1]
    assert sum(mc.num_queries for mc in c.modalities.values()) == 804_737
    assert create_model("perceiver-io-multimodal-debug", device="meta").num_parameters() == 40_790


def test_video_patch_order_is_dt_dh_dw_c():
    video = torch.randn(2, 4, 6, 8, 3)
    out = video_space_to_depth(video, 2, 2)  # (2, 2, 3, 4, 2*2*2*3)
    assert out.shape == (2, 2, 3, 4, 24)
    for t, h, w in ((0, 0, 0), (1, 2, 3), (1, 0, 2)):
        expected = [video[:, 2 * t + dt, 2 * h + dh, 2 * w + dw, c]
                    for dt in range(2) for dh in range(2) for dw in range(2) for c in range(3)]
        torch.testing.assert_close(out[:, t, h, w], torch.stack(expected, dim=-1), rtol=0, atol=0)


def test_tokens_padding_masking_and_sorted_order(model):
    x = _inputs()
    tokens, sizes, feats = model.preprocessor(x)
    common = model.config.preprocessor.input_width
    assert sizes == {"audio": 16, "image": 8, "label": 1} and tokens.shape == (2, 25, common)
    audio, image, label = tokens.split([16, 8, 1], dim=1)  # sorted names: audio, image, label
    cfg = model.config.preprocessor.modalities
    pos = fourier_features(grid_positions((16,)), num_bands=4, max_resolution=(64,))  # max resolution = samples
    torch.testing.assert_close(audio[0], torch.cat([x["audio"][0].reshape(16, 4), pos,
                                                    model.preprocessor.padding["audio"].expand(16, -1)], -1))
    width = cfg["image"].input_channels
    torch.testing.assert_close(image[..., width:], model.preprocessor.padding["image"].expand(2, 8, -1))
    torch.testing.assert_close(feats["image"], video_space_to_depth(x["image"], 1, 4).reshape(2, 8, 48))
    pos = fourier_features(grid_positions((2, 2, 2)), num_bands=4, max_resolution=(2, 2, 2))  # patch grid
    torch.testing.assert_close(image[..., 48:width], pos.expand(2, -1, -1))
    assert torch.equal(label, model.preprocessor.mask_token["label"].expand(2, 1, -1))  # p = 1: always masked
    assert not model.training  # ... also in evaluation (official)


def test_mask_probability_override_and_generator(model):
    x = _inputs(batch=64)
    tokens, _, _ = model.preprocessor(x, mask_probs={"image": 0.5}, generator=torch.Generator().manual_seed(0))
    image = tokens[:, 16:24]
    masked = (image == model.preprocessor.mask_token["image"]).all(-1)
    assert 0.4 < masked.float().mean().item() < 0.6
    again, _, _ = model.preprocessor(x, mask_probs={"image": 0.5}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)
    unmasked, _, _ = model.preprocessor(x, mask_probs={"label": 0.0})
    assert torch.equal(unmasked[:, 24, :5], x["label"])


def test_explicit_mask_chooses_the_masked_tokens(model):
    x = _inputs()
    hidden = torch.zeros(2, 8, dtype=torch.bool)
    hidden[0, [1, 5]] = True
    tokens, _, _ = model.preprocessor(x, mask={"image": hidden, "label": torch.tensor([[False], [True]])})
    image = tokens[:, 16:24]
    assert torch.equal((image == model.preprocessor.mask_token["image"]).all(-1), hidden)
    plain, _, _ = model.preprocessor(x, mask_probs={"label": 0.0})
    assert torch.equal(tokens[1, 24], model.preprocessor.mask_token["label"][0])
    assert torch.equal(tokens[0, 24], plain[0, 24]) and torch.equal(image[:, 0], plain[:, 16])
    with torch.no_grad():  # no mask hidden == probability 0
        torch.testing.assert_close(model(x, mask={"image": torch.zeros(2, 8, dtype=torch.bool)}),
                                   model(x, mask_probs={"image": 0.0}), rtol=0, atol=0)
    for mask, probs, exc, match in [({"image": hidden[:, :4]}, None, ValueError, r"\(B, M_m\)=\(2, 8\)"),
                                    ({"image": hidden.long()}, None, TypeError, "bool"),
                                    ({"other": hidden}, None, ValueError, "without a mask token"),
                                    ({"image": hidden}, {"image": 0.5}, ValueError, "both mask and mask_probs")]:
        with pytest.raises(exc, match=match):
            model(x, mask=mask, mask_probs=probs)


def test_label_is_masked_so_the_autoencoder_classifies(model):
    x = _inputs()
    with torch.no_grad():
        a = model(x)
        b = model({**x, "label": torch.randn(2, 5)})
        c = model({k: v for k, v in x.items() if k != "label"})  # an always-masked modality may be left out
        d = model(x, mask_probs={"label": 0.0})
    assert a["label"].shape == (2, 5) and torch.equal(a["label"], b["label"]) and torch.equal(a["label"], c["label"])
    assert not torch.allclose(a["label"], d["label"])
    with pytest.raises(ValueError, match="lacks modality 'image'"):
        model({"audio": x["audio"], "label": x["label"]})


def test_shapes_subsampling_and_chunked_decoding(model):
    x = _inputs()
    with torch.no_grad():
        full = model(x)
        assert {k: tuple(v.shape) for k, v in full.items()} == {"audio": (2, 64), "image": (2, 2, 8, 8, 3),
                                                                "label": (2, 5)}
        every = {"image": torch.arange(128), "audio": torch.arange(16)}
        sub = model(x, subsampled_output_points=every)
        assert sub["image"].shape == (2, 128, 3) and sub["audio"].shape == (2, 64)
        chunked = model.autoencode(x, num_chunks=5)  # uneven chunks
        for k in sub:
            torch.testing.assert_close(chunked[k].reshape(sub[k].shape), sub[k], rtol=0, atol=1e-5)
        part = model(x, subsampled_output_points={"image": torch.tensor([5, 77]), "audio": torch.tensor([3])})
        torch.testing.assert_close(part["image"], sub["image"][:, [5, 77]], rtol=0, atol=1e-5)
        torch.testing.assert_close(part["audio"], sub["audio"][:, 12:16], rtol=0, atol=1e-5)
        per_example = model(x, subsampled_output_points={"image": torch.tensor([[5], [77]])})
        torch.testing.assert_close(per_example["image"][:, 0], sub["image"][[0, 1], [5, 77]], rtol=0, atol=1e-5)
        assert per_example["audio"].shape == (2, 64)  # not subsampled: the whole grid
        # The full grid uses linspace(-1, 1) positions, subsampling -1 + 2i/n (both official): they differ.
        assert not torch.allclose(full["image"].reshape(2, 128, 3), sub["image"], atol=1e-3)
        head = model.forward_head(model.forward_features(x), modalities=["label"])
    assert list(head) == ["label"] and torch.allclose(head["label"], full["label"], atol=1e-5)


def test_generic_modality_names():
    cfg = get_config(DEBUG)
    mods = cfg.preprocessor.modalities
    renamed = cfg.replace(preprocessor={"modalities": {"zz_wave": mods["audio"], "cam": mods["image"],
                                                       "aa_class": mods["label"]}})
    torch.manual_seed(0)
    model = PerceiverIOMultimodal(renamed).eval()
    x = _inputs()
    with torch.no_grad():
        out = model({"zz_wave": x["audio"], "cam": x["image"], "aa_class": x["label"]},
                    subsampled_output_points={"cam": torch.arange(4)})
        tokens, sizes, _ = model.preprocessor({"zz_wave": x["audio"], "cam": x["image"], "aa_class": x["label"]})
    assert list(sizes) == ["aa_class", "cam", "zz_wave"] and tokens.shape[1] == 25
    assert list(out) == ["aa_class", "cam", "zz_wave"] and out["cam"].shape == (2, 4, 3)
    assert "preprocessor.mask_token.aa_class" in model.state_dict() and "decoder.queries.aa_class.pos_embs" in \
        model.state_dict()
    video_only = cfg.replace(preprocessor={"modalities": {"clip": mods["image"].replace(mask_prob=None)}})
    assert PerceiverIOMultimodal(video_only)({"clip": x["image"]})["clip"].shape == (2, 2, 8, 8, 3)


def test_other_input_grid_and_gradients(model):
    x = _inputs()
    x["image"] = torch.rand(2, 4, 12, 16, 3)  # Fourier positions over the actual grid; queries stay configured
    x["audio"] = torch.randn(2, 40)
    out = model.train()(x)
    model.eval()
    assert out["image"].shape == (2, 2, 8, 8, 3) and out["audio"].shape == (2, 64)
    sum(v.square().mean() for v in out.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad()
    assert grads["preprocessor.padding.image"].abs().sum() > 0 and grads["decoder.queries.label.pos_embs"].abs().sum() > 0
    assert grads["preprocessor.mask_token.label"].abs().sum() > 0 and grads["preprocessor.mask_token.image"] is None


def test_errors(model):
    x = _inputs()
    cases = [({**x, "image": x["image"][..., :2]}, ValueError, "C=3"),
             ({**x, "image": torch.rand(2, 2, 6, 8, 3)}, ValueError, "multiples of the patch"),
             ({**x, "audio": torch.randn(2, 62)}, ValueError, "samples_per_patch=4"),
             ({**x, "label": torch.zeros(2, 4)}, ValueError, "num_classes=5"),
             ({**x, "audio": torch.randn(3, 64)}, ValueError, "same batch size"),
             ({**x, "video": x["image"]}, ValueError, "unknown modalities"),
             ({**x, "audio": torch.zeros(2, 64, dtype=torch.long)}, TypeError, "floating-point"),
             ({**x, "audio": torch.zeros(2, 64, dtype=torch.float64)}, TypeError, "dtype")]
    for inputs, exc, match in cases:
        with pytest.raises(exc, match=match):
            model(inputs)
    for points, exc, match in [({"label": torch.tensor([0])}, ValueError, "cannot be subsampled"),
                               ({"image": torch.tensor([128])}, ValueError, r"\[0, 128\)"),
                               ({"image": torch.tensor([0.5])}, TypeError, "integer"),
                               ({"video": torch.tensor([0])}, ValueError, "unknown modalities")]:
        with pytest.raises(exc, match=match):
            model(x, subsampled_output_points=points)
    with pytest.raises(ValueError, match="without a mask token"):
        model(x, mask_probs={"other": 0.5})
    with pytest.raises(ValueError, match="float in"):
        model(x, mask_probs={"label": 1.5})
    with pytest.raises(ValueError, match="num_chunks"):
        model.autoencode(x, num_chunks=0)


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        ModalityConfig(kind="text")
    with pytest.raises(ValueError, match="divisible by the patch"):
        ModalityConfig(kind="video", image_size=(10, 8))
    with pytest.raises(ValueError, match="mask_prob"):
        ModalityConfig(kind="label", mask_prob=1.2)
    with pytest.raises(ValueError, match="3 entries"):
        ModalityConfig(kind="video", max_resolution=(16, 56))
    with pytest.raises(ValueError, match="identifiers"):
        MultimodalPreprocessorConfig(modalities={"my video": ModalityConfig(kind="video")})
    with pytest.raises(ValueError, match="ModuleDict"):
        MultimodalPreprocessorConfig(modalities={"keys": ModalityConfig(kind="label")})
    with pytest.raises(TypeError, match="non-empty dict"):
        MultimodalPreprocessorConfig(modalities={})
    cfg = get_config(DEBUG)
    with pytest.raises(ValueError, match="decoder.type"):
        cfg.replace(decoder={"type": "classification", "num_outputs": 5})
    with pytest.raises(ValueError, match="layout"):
        cfg.replace(encoder={"layout": "interleaved"})


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.config == model.config
    x = _inputs()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
