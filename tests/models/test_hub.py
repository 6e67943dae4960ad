"""save_pretrained / from_pretrained: exact round trip, safetensors only, clear errors."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit.models import randomize_, tiny_config, tiny_decoder, tiny_prep

from perceivers import PerceiverIO, from_pretrained
from perceivers.models.hub import CONFIG_NAME, WEIGHTS_NAME


def _model(cfg=None) -> PerceiverIO:
    return randomize_(PerceiverIO(cfg or tiny_config(prep=tiny_prep("conv")))).eval()


@pytest.fixture
def saved(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "ckpt")
    return m, tmp_path / "ckpt"


@pytest.fixture
def no_pickle(monkeypatch):
    """Make every unpickling entry point fail: loading must not need any of them."""
    def boom(*a, **k):
        raise AssertionError("pickle was used")
    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)


def test_round_trip_is_exact(saved, no_pickle):
    m, path = saved
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME] == ["config.json",
                                                                                       "model.safetensors"]
    loaded = from_pretrained(path)
    assert isinstance(loaded, PerceiverIO) and not loaded.training
    assert loaded.config == m.config
    sa, sb = m.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:  # parameters and BatchNorm running statistics
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert not any(p.is_meta for p in loaded.parameters())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(m(x), loaded(x))


@pytest.mark.parametrize("cfg", [
    tiny_config(decoder=tiny_decoder("basic", output_index_dims=(2, 3), max_resolution=(4, 6))),
    tiny_config(prep=tiny_prep("conv1x1", position_encoding="trainable", trainable_pos_channels=3,
                               project_pos_dim=2), decoder=tiny_decoder("projection")),
], ids=["basic-tuples", "trainable-projection"])
def test_round_trip_other_configs(tmp_path, cfg):
    m = _model(cfg)
    m.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.config == m.config  # tuples survive the JSON lists
    x = torch.randn(2, 3, 8, 8) if cfg.preprocessor is not None else torch.randn(2, 4, 5)
    assert torch.equal(m(x), loaded(x))


def test_files_are_json_and_safetensors(saved):
    m, path = saved
    data = json.loads((path / CONFIG_NAME).read_text())
    assert data["model_type"] == "perceiver_io"
    assert data["config"]["encoder"]["num_latents"] == m.config.encoder.num_latents
    raw = (path / WEIGHTS_NAME).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert set(header) - {"__metadata__"} == set(m.state_dict())
    assert b"\x80\x04" not in raw[:2]  # not a pickle stream
    assert set(load_file(str(path / WEIGHTS_NAME))) == set(m.state_dict())


def test_save_overwrites_previous_checkpoint(tmp_path):
    a, b = _model(), _model()
    a.save_pretrained(tmp_path)
    b.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files left
    loaded = from_pretrained(tmp_path)
    assert torch.equal(loaded.encoder.latents, b.encoder.latents)


def test_save_meta_model_fails(tmp_path):
    with torch.device("meta"):
        m = PerceiverIO(tiny_config())
    with pytest.raises(ValueError, match="meta"):
        m.save_pretrained(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        from_pretrained(tmp_path / "nope")


def test_missing_config(saved):
    _, path = saved
    (path / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(path)


def test_missing_weights(saved):
    _, path = saved
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(path)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '{"model_type": "perceiver_io"}', "\udcff"])
def test_corrupted_config(saved, text):
    _, path = saved
    (path / CONFIG_NAME).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match="config.json"):
        from_pretrained(path)


def test_unknown_model_type(saved):
    _, path = saved
    data = json.loads((path / CONFIG_NAME).read_text())
    data["model_type"] = "perceiver_zz"
    (path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="perceiver_zz"):
        from_pretrained(path)


def test_invalid_config_values(saved):
    _, path = saved
    data = json.loads((path / CONFIG_NAME).read_text())
    data["config"]["encoder"]["num_latents"] = -3
    (path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="num_latents"):
        from_pretrained(path)
    data["config"]["encoder"]["num_latents"] = 4
    data["config"]["encoder"]["bogus_field"] = 1
    (path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bogus_field"):
        from_pretrained(path)


@pytest.mark.parametrize("corrupt", ["garbage", "truncated", "empty", "bad_header"])
def test_corrupted_safetensors(saved, corrupt):
    _, path = saved
    f = path / WEIGHTS_NAME
    raw = f.read_bytes()
    if corrupt == "garbage":
        f.write_bytes(bytes(range(256)) * 4)
    elif corrupt == "truncated":
        f.write_bytes(raw[: len(raw) // 2])
    elif corrupt == "empty":
        f.write_bytes(b"")
    else:
        f.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + raw[8:])
    with pytest.raises(ValueError, match="model.safetensors"):
        from_pretrained(path)


def _rewrite(path, edit):
    state = load_file(str(path / WEIGHTS_NAME))
    edit(state)
    save_file(state, str(path / WEIGHTS_NAME))


def test_missing_key(saved):
    _, path = saved
    _rewrite(path, lambda s: s.pop("encoder.latents"))
    with pytest.raises(ValueError, match=r"missing key: encoder\.latents"):
        from_pretrained(path)


def test_unexpected_key(saved):
    _, path = saved
    _rewrite(path, lambda s: s.__setitem__("encoder.extra", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected key: encoder\.extra"):
        from_pretrained(path)


def test_wrong_shape(saved):
    _, path = saved
    _rewrite(path, lambda s: s.__setitem__("encoder.latents", torch.zeros(3, 3)))
    with pytest.raises(ValueError, match=r"encoder\.latents.*\(3, 3\)"):
        from_pretrained(path)


def test_every_problem_is_listed_at_once(saved):
    _, path = saved

    def edit(s):
        s.pop("decoder.output.bias")
        s["foo"] = torch.zeros(1)
        s["decoder.output.weight"] = torch.zeros(1, 1)

    _rewrite(path, edit)
    with pytest.raises(ValueError) as info:
        from_pretrained(path)
    msg = str(info.value)
    assert "model.safetensors" in msg
    assert "decoder.output.bias" in msg and "foo" in msg and "decoder.output.weight" in msg


def test_config_of_another_model_is_rejected(tmp_path):
    """Weights saved by one config cannot be loaded under another (shape mismatch is reported)."""
    a = _model(tiny_config())
    a.save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    data["config"]["encoder"]["num_latents"] = 6
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="encoder.latents"):
        from_pretrained(tmp_path)


def test_from_pretrained_in_a_fresh_process_knows_every_family(tmp_path):
    """A new interpreter that only imports perceivers can load any saved family (no registry call first)."""
    import subprocess
    import sys

    from perceivers.models import create_model

    names = ["perceiver-io-digits", "perceiver-ar-debug", "hip-debug", "perceiver-io-language-debug"]
    expected = []
    for i, name in enumerate(names):
        model = create_model(name)
        model.save_pretrained(tmp_path / str(i))
        expected.append(type(model).__name__)
    code = ("import sys, perceivers\n"
            "for path in sys.argv[1:]: print(type(perceivers.from_pretrained(path)).__name__)")
    out = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / str(i)) for i in range(len(names)))],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expected
