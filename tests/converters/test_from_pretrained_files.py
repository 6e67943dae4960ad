"""``perceivers.from_pretrained`` on an official Perceiver IO parameter file, by path or by URL: converted on the fly
(configuration read from the tree), the same outputs as the model the file was written from."""

from __future__ import annotations

import pytest
import torch
from testkit.haiku import haiku_trees, write_pickle
from testkit.models import randomize_

import perceivers
from perceivers.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

OVERRIDES = {"encoder": {"num_latents": 4, "num_latent_channels": 16, "num_self_attends_per_block": 2},
             "decoder": {"num_query_channels": 16, "num_outputs": 5}, "preprocessor": {"num_bands": 4}}


@pytest.fixture
def official_file(tmp_path):
    source = randomize_(create_model("perceiver-io-imagenet-fourier", **OVERRIDES), 0.3).eval()
    params, _ = haiku_trees(source)
    return source, write_pickle(tmp_path / "imagenet_fourier.pystate", {"params": params, "state": {}})


def _same_outputs(a, b):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_from_pretrained_converts_an_official_file_by_path(official_file):
    source, path = official_file
    model = perceivers.from_pretrained(path)
    assert not model.training and model.config.encoder == source.config.encoder
    assert _same_outputs(model, source)
    assert perceivers.from_pretrained(str(path), dtype=torch.float64).encoder.latents.dtype == torch.float64


def test_from_pretrained_downloads_an_official_file_by_url_once(official_file, tmp_path, monkeypatch):
    source, path = official_file
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "cache"))
    model = perceivers.from_pretrained(path.as_uri())
    assert _same_outputs(model, source)
    cached = list((tmp_path / "cache").rglob("*.pystate"))
    assert len(cached) == 1 and cached[0].read_bytes() == path.read_bytes()


def test_from_pretrained_file_refuses_folder_only_options(official_file):
    _, path = official_file
    with pytest.raises(ValueError, match="parameter file"):
        perceivers.from_pretrained(path, revision="main")
    with pytest.raises(ValueError, match="dtype"):
        perceivers.from_pretrained(path, dtype=torch.int64)
