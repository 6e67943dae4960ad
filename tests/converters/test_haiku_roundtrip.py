"""Every supported official head, at sizes the registry does not have: an official-format tree -> ``perceivers
convert haiku`` (configuration read from the tree, no --model) -> save -> load -> the same outputs as the model
the tree was written from, bit for bit. Also a separate BatchNorm --state file and a file:// URL."""

from __future__ import annotations

import pytest
import torch
from testkit.haiku import haiku_trees, write_pickle
from testkit.models import randomize_

from perceivers import from_pretrained
from perceivers.cli.main import main
from perceivers.converters import haiku as hk
from perceivers.converters.haiku_infer import infer_overrides
from perceivers.models import create_model, get_config

pytestmark = pytest.mark.usefixtures("one_thread")

ENC = {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 3}
DEC = {"num_query_channels": 16, "num_outputs": 5}
gen = torch.Generator().manual_seed(0)

#: head -> (registered kind, overrides of the source model, extra CLI flags for what the file cannot fix, inputs)
CASES = {
    "imagenet-fourier": ("perceiver-io-imagenet-fourier", {"encoder": ENC, "decoder": DEC,
                         "preprocessor": {"num_bands": 4}}, [], lambda: torch.randn(2, 3, 16, 16, generator=gen)),
    "imagenet-learned": ("perceiver-io-imagenet-learned", {"encoder": ENC, "decoder": DEC, "preprocessor": {
                         "image_size": (8, 8), "num_channels": 6, "trainable_pos_channels": 5, "project_pos_dim": 7}}, [],
                         lambda: torch.randn(2, 3, 8, 8, generator=gen)),
    "imagenet-conv": ("perceiver-io-imagenet-conv", {"encoder": ENC, "decoder": DEC,
                      "preprocessor": {"num_channels": 8, "num_bands": 3}}, [],
                      lambda: torch.randn(2, 3, 16, 16, generator=gen)),
    "language-mlm": ("perceiver-io-language-mlm", {
        "preprocessor": {"num_channels": 16, "max_seq_len": 32},
        "encoder": {"num_latents": 8, "num_latent_channels": 32, "num_self_attends_per_block": 3, "qk_channels": 16,
                     "v_channels": 32, "num_self_attend_heads": 2},
        "decoder": {"output_index_dims": (32,), "num_query_channels": 16, "qk_channels": 16, "v_channels": 16}},
        ["--heads", "2"], lambda: torch.randint(0, 262, (2, 32), generator=gen)),
    "flow": ("perceiver-io-flow", {"preprocessor": {"image_size": (12, 16), "num_channels": 16, "num_bands": 8},
             "encoder": {"num_latents": 16, "num_latent_channels": 32, "num_self_attends_per_block": 2,
                          "num_self_attend_heads": 4}, "decoder": {"chunk_size": 64}},
             ["--heads", "4", "--set", "preprocessor.image_size=[12, 16]", "--set", "decoder.chunk_size=64"],
             lambda: torch.rand(1, 2, 3, 12, 16, generator=gen) * 2 - 1),
}


def _outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("head", sorted(CASES))
def test_convert_save_load_is_exact_without_model_name(tmp_path, head):
    name, overrides, flags, inputs = CASES[head]
    source = randomize_(create_model(name, **overrides), 0.3).eval()
    params, state = haiku_trees(source)
    args = ["convert", "haiku", str(write_pickle(tmp_path / "params.pickle", params)), str(tmp_path / "out"), *flags]
    if state:  # the official conv checkpoint keeps the BatchNorm statistics in a separate state tree
        args += ["--state", str(write_pickle(tmp_path / "state.pickle", state))]
    assert main(args) == 0
    loaded = from_pretrained(tmp_path / "out")
    x = inputs()
    assert torch.equal(_outputs(loaded, x), _outputs(source, x))
    assert loaded.config.encoder == source.config.encoder


MULTIMODAL_FLAGS = [  # what the weights do not fix: frames, image size, samples, Fourier maximum resolutions, heads
    "--heads", "2", "--set", "preprocessor.modalities.image.num_frames=2",
    "--set", "preprocessor.modalities.image.image_size=[8, 8]",
    "--set", "preprocessor.modalities.image.max_resolution=[2, 2, 2]",
    "--set", "preprocessor.modalities.image.query_max_resolution=[2, 2, 2]",
    "--set", "preprocessor.modalities.audio.num_samples=64", "--set", "preprocessor.modalities.audio.max_resolution=[64]"]


@pytest.mark.parametrize("flags", [MULTIMODAL_FLAGS, ["--model", "perceiver-io-multimodal-debug"]],
                         ids=["inferred", "named"])
def test_multimodal_convert_save_load_is_exact(tmp_path, flags):
    source = randomize_(create_model("perceiver-io-multimodal-debug"), 0.3).eval()
    params, _ = haiku_trees(source)
    path = write_pickle(tmp_path / "video_autoencoding_checkpoint.pystate", params, protocol=2)
    assert main(["convert", "haiku", str(path), str(tmp_path / "out"), *flags]) == 0
    loaded = from_pretrained(tmp_path / "out")
    x = {"image": torch.rand(1, 2, 8, 8, 3, generator=gen), "audio": torch.randn(1, 64, generator=gen)}
    with torch.no_grad():
        a, b = loaded(x), source(x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_conv_checkpoint_saves_with_state_inside_the_file(tmp_path):
    """The `.pystate` layout {'params', 'state'} with BatchNorm: converted on the meta device, then saved."""
    source = randomize_(create_model("perceiver-io-imagenet-conv", **CASES["imagenet-conv"][1]), 0.3).eval()
    params, state = haiku_trees(source)
    path = write_pickle(tmp_path / "imagenet_conv_preprocessing.pystate", {"params": params, "state": state})
    model = hk.convert_haiku_file(path)
    assert model.state_dict()["preprocessor.conv.batchnorms.0.num_batches_tracked"].device.type == "cpu"
    loaded = from_pretrained(model.save_pretrained(tmp_path / "out"))
    x = torch.randn(1, 3, 16, 16, generator=gen)
    assert torch.equal(_outputs(loaded, x), _outputs(source, x))


def test_missing_state_file_is_reported(tmp_path):
    source = create_model("perceiver-io-imagenet-conv", **CASES["imagenet-conv"][1])
    params, _ = haiku_trees(source)
    path = write_pickle(tmp_path / "params.pickle", params)
    with pytest.raises(ValueError, match="2 missing: .*batchnorm/~/mean_ema.*batchnorm/~/var_ema"):
        hk.convert_haiku_file(path)


def test_unfixed_fields_keep_defaults_and_take_overrides(tmp_path, capsys):
    source = create_model("perceiver-io-imagenet-fourier", **CASES["imagenet-fourier"][1])
    params, _ = haiku_trees(source)
    path = write_pickle(tmp_path / "p.pickle", params)
    assert main(["convert", "haiku", str(path), str(tmp_path / "a")]) == 0
    assert from_pretrained(tmp_path / "a").config.encoder.num_blocks == 8  # the official default
    assert main(["convert", "haiku", str(path), str(tmp_path / "b"), "--set", "encoder.num_blocks=3",
                 "--heads", "4", "--set", "decoder.num_heads=2"]) == 0
    config = from_pretrained(tmp_path / "b").config
    assert (config.encoder.num_blocks, config.encoder.num_self_attend_heads, config.decoder.num_heads) == (3, 4, 2)
    assert main(["convert", "haiku", str(path), str(tmp_path / "c"), "--heads", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_self_attend_heads" in err and "--heads" in err


def test_wrong_model_error_says_what_the_file_holds(tmp_path, capsys):
    source = create_model("perceiver-io-language-mlm", **CASES["language-mlm"][1])
    params, _ = haiku_trees(source)
    path = write_pickle(tmp_path / "mlm.pickle", params)
    assert main(["convert", "haiku", str(path), str(tmp_path / "o"), "--model", "perceiver-io-language-mlm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert ("this file holds a 3-layer, 8x32-latent language MLM; --model perceiver-io-language-mlm expects a "
            "26-layer, 256x1280-latent language MLM") in err
    # the 23 absent layers are one entry, and every mis-shaped entry is listed with both shapes
    assert "184 missing: perceiver_encoder/~/{self_attention_3 .. self_attention_25}/* (23 layers x 8 entries" in err
    assert "embed/embeddings [262, 16] (expected [262, 768])" in err
    assert "perceiver_encoder/~/self_attention_2/attention/linear/w [32, 16] (expected [1280, 256])" in err
    assert not (tmp_path / "o").exists()


def test_a_damaged_tree_lists_every_problem(tmp_path, capsys):
    """Sizes that cannot be read (latents gone) fall back to the released size, and every problem is listed."""
    source = create_model("perceiver-io-language-mlm", **CASES["language-mlm"][1])
    params, _ = haiku_trees(source)
    del params["perceiver_encoder/~/trainable_position_encoding"], params["basic_decoder/cross_attention/layer_norm"]
    path = write_pickle(tmp_path / "mlm.pickle", params)
    assert main(["convert", "haiku", str(path), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert ("the released perceiver-io-language-mlm (the sizes cannot be read: the Haiku tree has no "
            "perceiver_encoder/~/trainable_position_encoding/pos_embs, which a language MLM needs)" in err)
    assert "this file holds a 3-layer, ?-latent language MLM" in err
    assert "perceiver_encoder/~/trainable_position_encoding; basic_decoder/cross_attention/layer_norm" in err
    assert "embed/embeddings [262, 16] (expected [262, 768])" in err


def test_url_is_downloaded_to_the_cache_then_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "cache"))
    source = randomize_(create_model("perceiver-io-imagenet-conv", **CASES["imagenet-conv"][1]), 0.3).eval()
    params, state = haiku_trees(source)
    remote = write_pickle(tmp_path / "imagenet_conv_preprocessing.pystate", {"params": params, "state": state})
    url = remote.as_uri()
    assert main(["convert", "haiku", url, str(tmp_path / "out")]) == 0
    cached = list((tmp_path / "cache").iterdir())
    assert [p.name.split("-", 1)[1] for p in cached] == ["imagenet_conv_preprocessing.pystate"]
    assert cached[0].read_bytes() == remote.read_bytes()
    remote.unlink()  # a second conversion reads the cached copy
    assert main(["convert", "haiku", url, str(tmp_path / "again")]) == 0
    x = torch.randn(1, 3, 16, 16, generator=gen)
    assert torch.equal(_outputs(from_pretrained(tmp_path / "again"), x), _outputs(source, x))


def test_unreachable_url_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "cache"))
    assert main(["convert", "haiku", (tmp_path / "absent.pystate").as_uri(), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot download file://" in err
    assert not any((tmp_path / "cache").iterdir())  # no partial file left under the final name


def test_inferred_overrides_of_a_tree():
    source = create_model("perceiver-io-language-mlm", **CASES["language-mlm"][1])
    inferred = infer_overrides(haiku_trees(source)[0], "perceiver-io-language-mlm")
    assert inferred["encoder"] == {"num_latents": 8, "num_latent_channels": 32, "num_self_attends_per_block": 3,
                                       "cross_attend_widening_factor": 1, "self_attend_widening_factor": 1,
                                       "qk_channels": 16, "v_channels": 32}
    assert inferred["preprocessor"] == {"vocab_size": 262, "num_channels": 16, "max_seq_len": 32}


@pytest.mark.parametrize("name", ["perceiver-io-imagenet-fourier", "perceiver-io-imagenet-learned",
                                  "perceiver-io-imagenet-conv", "perceiver-io-language-mlm", "perceiver-io-flow",
                                  "perceiver-io-multimodal-kinetics"])
def test_released_sizes_are_read_back_from_their_trees(name):
    """Every released configuration is what its tree's names and shapes give (shapes only: arrays take no memory)."""
    released = create_model(name, device="meta")
    params, _ = haiku_trees(released)
    assert hk.guess_model_name(params) == name
    assert get_config(name, **infer_overrides(params, name)) == released.config
