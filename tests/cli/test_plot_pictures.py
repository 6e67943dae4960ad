"""``perceivers plot attention`` / ``plot predictions``: PNGs of tiny saved models, and one-line errors for bad
arguments (``plot RUN_DIR`` is tested with the engine and in test_cli)."""

from __future__ import annotations

import sys

import pytest
import torch

import perceivers
from perceivers import create_model, get_config
from perceivers.cli.main import main
from perceivers.training.plot_attention import plot_attention
from perceivers.training.plot_predictions import plot_predictions

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A tiny classifier of the digits' 8x8 images (the digits recipe's shape, debug widths), saved."""
    pytest.importorskip("matplotlib")
    config = get_config("perceiver-io-digits").debug_size()
    config = config.replace(preprocessor=config.preprocessor.replace(image_size=(8, 8), max_resolution=(8, 8)),
                            decoder=config.decoder.replace(num_outputs=10))
    torch.manual_seed(0)
    return perceivers.PerceiverIO(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "run" / "model")


def test_attention_and_predictions_write_pngs(digits_model, tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["plot", "attention", "--checkpoint", str(digits_model), "--out", str(out), "--index", "3",
                 "--latents", "2", "--threads", "1"]) == 0
    assert out.read_bytes().startswith(PNG) and f"wrote {out}" in capsys.readouterr().out
    assert main(["plot", "predictions", "--checkpoint", str(digits_model), "--count", "5"]) == 0  # default --out
    assert (digits_model.parent / "predictions.png").read_bytes().startswith(PNG)
    assert not list(digits_model.parent.glob(".*.tmp"))  # written atomically, nothing left over


def test_flow_attention_png(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("skimage")
    torch.manual_seed(0)
    model = create_model("perceiver-io-flow-debug").eval()
    out = plot_attention(model, out=tmp_path / "flow.png", latents=3)  # the Middlebury pair at 12x16
    assert out.read_bytes().startswith(PNG)


def test_point_sets_and_the_original_perceiver(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("mlxtend")
    torch.manual_seed(0)
    config = get_config("perceiver-io-pointcloud").debug_size()
    points = perceivers.PerceiverIO(config.replace(input_channels=2 + 4 * 8,
                                                   decoder=config.decoder.replace(num_outputs=10))).eval()
    for out in (plot_predictions(points, out=tmp_path / "p.png", count=3),
                plot_attention(points, out=tmp_path / "a.png", index=999, latents=2)):
        assert out.read_bytes().startswith(PNG)
    config = get_config("perceiver-io-digits").debug_size()
    interleaved = perceivers.PerceiverIO(config.replace(
        preprocessor=config.preprocessor.replace(image_size=(8, 8), max_resolution=(8, 8)),
        encoder=config.encoder.replace(layout="interleaved"), decoder=config.decoder.replace(num_outputs=10)))
    assert plot_attention(interleaved.eval(), out=tmp_path / "i.png").read_bytes().startswith(PNG)


def test_missing_matplotlib_names_the_extra(monkeypatch, digits_model, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["plot", "attention", "--checkpoint", str(digits_model)]) == 2
    assert "perceivers plot needs matplotlib: pip install 'perceivers[plot]'" in capsys.readouterr().err


ERRORS = [
    (["plot", "attention"], "perceivers plot attention needs --checkpoint MODEL_DIR"),
    (["plot", "{run}", "--checkpoint", "{digits}"], "--checkpoint belongs to `perceivers plot attention|predictions"),
    (["plot", "attention", "--checkpoint", "{digits}", "--count", "3"], "--count is not a flag of `perceivers plot"),
    (["plot", "predictions", "--checkpoint", "{digits}", "--latents", "3"], "--latents is not a flag"),
    (["plot", "attention", "--checkpoint", "{digits}", "--index", "360"], "expected an int in [0, 360) (a test image)"),
    (["plot", "attention", "--checkpoint", "{digits}", "--index", "-1"], "--index=-1 is invalid"),
    (["plot", "attention", "--checkpoint", "{digits}", "--latents", "0"], "--latents=0 is invalid"),
    (["plot", "predictions", "--checkpoint", "{digits}", "--count", "1000"], "--count=1000 is invalid"),
    (["plot", "attention", "--checkpoint", "{digits}", "--recipe", "text"], "--recipe='text' is invalid"),
    (["plot", "attention", "--checkpoint", "{digits}", "--recipe", "flow"], "--recipe flow needs a Perceiver IO optical-flow"),
    (["plot", "attention", "--checkpoint", "{ar}"], "--checkpoint is a Perceiver AR"),
    (["plot", "predictions", "--checkpoint", "{missing}"], "--checkpoint"),
    (["plot", "attention", "--checkpoint", "{digits}", "--out", "{tmp}/a.nope"], "cannot tell the image format"),
    (["plot", "attention", "--checkpoint", "{digits}", "--out", "{tmp}/no/a.png"], "does not exist"),
]


@pytest.mark.parametrize("argv, message", ERRORS, ids=[" ".join(a)[:60] for a, _ in ERRORS])
def test_bad_arguments_are_one_line_errors(argv, message, digits_model, tmp_path, capsys):
    ar = create_model("perceiver-ar-debug").save_pretrained(tmp_path / "ar") if "{ar}" in argv else None
    names = {"digits": digits_model, "run": digits_model.parent, "ar": ar, "missing": tmp_path / "missing",
             "tmp": tmp_path}
    argv = [a.format(**names) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("perceivers plot: error: ") and err.count("\n") == 1, err
    assert message in err, err
