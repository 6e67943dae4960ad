"""Hub ids: ``perceivers.from_pretrained("owner/name")`` and ``convert hf owner/name OUT`` from a local Hub cache.

Every test runs with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` (or ``HF_HOME``) pointing at a folder the test fills in
huggingface_hub's cache layout (``models--owner--name/snapshots/<commit>/`` + ``refs/main``): no network ever.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")

from testkit.models import tiny_config

import perceivers
from perceivers.cli.main import main
from perceivers.converters.hf import convert_hf_folder
from perceivers.converters.hub_fetch import parse_hub_id
from perceivers.models import from_pretrained as load_folder
from perceivers.tokenizers import BytesTokenizer

COMMIT, OLD_COMMIT = "a" * 40, "b" * 40
TOL = 1e-5


def _randomise(model, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # every tensor non-trivial so a mis-mapped one shows
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _hf_mlm():
    cfg = transformers.PerceiverConfig(d_latents=32, num_latents=8, num_blocks=1, num_self_attends_per_block=2,
                                       num_self_attention_heads=2, num_cross_attention_heads=2, qk_channels=16,
                                       v_channels=32, d_model=16, max_position_embeddings=32, vocab_size=262,
                                       attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return _randomise(transformers.PerceiverForMaskedLM(cfg))


def _hf_fourier(seed: int = 1):
    cfg = transformers.PerceiverConfig(d_latents=32, num_latents=8, num_blocks=1, num_self_attends_per_block=2,
                                       num_self_attention_heads=2, num_cross_attention_heads=1, image_size=8,
                                       num_labels=5, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return _randomise(transformers.PerceiverForImageClassificationFourier(cfg), seed)


def _snapshot(cache, repo_id: str, commit: str = COMMIT, ref: str | None = "main"):
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A Hub cache with a transformers MLM, a transformers Fourier classifier (two revisions) and a perceivers
    folder."""
    cache = tmp_path_factory.mktemp("hub") / "hub-cache"
    mlm, fourier = _hf_mlm(), _hf_fourier()
    mlm.save_pretrained(_snapshot(cache, "deepmind/language-perceiver"))
    fourier.save_pretrained(_snapshot(cache, "deepmind/vision-perceiver-fourier"))
    _hf_fourier(seed=2).save_pretrained(_snapshot(cache, "deepmind/vision-perceiver-fourier", OLD_COMMIT, ref=None))
    ours = perceivers.PerceiverIO(tiny_config()).eval()
    ours.save_pretrained(_snapshot(cache, "someone/tiny-perceiver"))
    return {"cache": cache, "mlm": mlm, "fourier": fourier, "ours": ours}


@pytest.fixture
def hub(cache, monkeypatch):
    """The cache above, offline, pointed at by HF_HUB_CACHE."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache["cache"]))
    monkeypatch.delenv("HF_HOME", raising=False)
    return cache


def _mlm_logits(model, hf: bool) -> torch.Tensor:
    ids, mask = BytesTokenizer().batch(["bytes: café", "short"], add_special_tokens=True)
    with torch.no_grad():
        out = model(inputs=ids, attention_mask=mask.long()).logits[:, : ids.shape[1]] if hf else model(ids, mask)
    return out[mask]


def test_from_pretrained_hub_id_converts_transformers_folders(hub):
    ours = perceivers.from_pretrained("deepmind/language-perceiver", hf_compat=True)
    a, b = _mlm_logits(hub["mlm"], hf=True), _mlm_logits(ours, hf=False)
    diff = (a - b).abs().max().item()
    print(f"Hub id MLM (hf-compat) vs transformers: max |diff| {diff:.2e}")
    assert a.abs().max() > 0.1 and diff <= TOL
    snapshot = hub["cache"] / "models--deepmind--language-perceiver" / "snapshots" / COMMIT
    faithful = perceivers.from_pretrained("deepmind/language-perceiver")  # official semantics by default
    assert faithful.config.activation == "gelu_tanh"
    assert torch.equal(_mlm_logits(faithful, hf=False), _mlm_logits(convert_hf_folder(snapshot), hf=False))
    doubled = perceivers.from_pretrained("deepmind/language-perceiver", dtype=torch.float64)
    assert {p.dtype for p in doubled.parameters()} == {torch.float64}
    with pytest.raises(ValueError, match="dtype=torch.int64 is invalid"):
        perceivers.from_pretrained("deepmind/language-perceiver", dtype=torch.int64)


def test_from_pretrained_hub_id_in_our_format_and_local_folders(hub, tmp_path):
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hub["ours"](x)
        assert torch.equal(perceivers.from_pretrained("someone/tiny-perceiver")(x), expected)
        hub["ours"].save_pretrained(tmp_path / "local")
        assert torch.equal(perceivers.from_pretrained(tmp_path / "local")(x), expected)
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a local path keeps the local error
        perceivers.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="revision='main' applies to Hub ids"):
        perceivers.from_pretrained(tmp_path / "local", revision="main")
    with pytest.raises(ValueError, match="hf_compat"):
        perceivers.from_pretrained("someone/tiny-perceiver", hf_compat=True)


def test_revisions_and_hf_home(hub, monkeypatch, tmp_path):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    main_rev = perceivers.from_pretrained("deepmind/vision-perceiver-fourier")
    old = perceivers.from_pretrained(f"deepmind/vision-perceiver-fourier@{OLD_COMMIT}")
    same = perceivers.from_pretrained("deepmind/vision-perceiver-fourier", revision=OLD_COMMIT)
    with torch.no_grad():
        assert not torch.equal(main_rev(x), old(x)) and torch.equal(old(x), same(x))
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "hub").symlink_to(hub["cache"], target_is_directory=True)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    with torch.no_grad():
        assert torch.equal(perceivers.from_pretrained("deepmind/vision-perceiver-fourier")(x), main_rev(x))


def test_cli_convert_hf_hub_id(hub, tmp_path, capsys):
    out = tmp_path / "fourier"
    assert main(["convert", "hf", "deepmind/vision-perceiver-fourier", str(out), "--hf-compat"]) == 0
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = (hub["fourier"](inputs=x).logits - load_folder(out)(x)).abs().max().item()
    print(f"convert hf Hub id (Fourier, hf-compat) vs transformers: max |diff| {diff:.2e}")
    assert diff <= TOL
    capsys.readouterr()
    assert main(["convert", "hf", "deepmind/no-such-model", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'deepmind/no-such-model' is not in the local Hub cache" in err, err
    assert "HF_HUB_OFFLINE=1" in err and str(hub["cache"]) in err
    assert main(["convert", "hf", "deepmind/vision-perceiver-fourier", str(tmp_path / "o"), "--revision", "v9"]) == 2
    assert "deepmind/vision-perceiver-fourier@v9" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_parse_hub_id():
    assert parse_hub_id("deepmind/language-perceiver") == ("deepmind/language-perceiver", None)
    assert parse_hub_id("a/b@v1.0") == ("a/b", "v1.0")
    for not_an_id in ("model", "/abs/path", "./rel/x", "a/b/c", "a/../b", "-a/b", "a b/c"):
        assert parse_hub_id(not_an_id) is None, not_an_id
