"""Non-finite inputs are refused before training, naming the first bad value's position: the validation helper and
the data paths of the recipes (the digits, scikit-image's photographs; text and copy data are integer ids)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError
from perceivers.core.validation import check_finite
from perceivers.data.digits import load_digits_split


def test_check_finite_names_the_first_bad_position():
    x = torch.zeros(20, 1, 8, 8)
    x[13, 0, 0, 0] = float("inf")
    x[12, 0, 3, 5] = float("nan")
    with pytest.raises(ConfigError, match=r"^images\[12, 0, 3, 5\] is nan: expected finite values"):
        check_finite("images", x)
    with pytest.raises(ConfigError, match=r"^images\[12, 0, 3, 5\] is nan"):
        check_finite("images", x.numpy())
    with pytest.raises(ConfigError, match=r"^scale is -inf"):
        check_finite("scale", torch.tensor(float("-inf")))
    for fine in (torch.ones(3), np.arange(4), torch.arange(5), np.array(["a"])):
        check_finite("fine", fine)


@pytest.fixture
def nan_digits(monkeypatch):
    import sklearn.datasets

    real = sklearn.datasets.load_digits

    def poisoned():
        data = real()
        data.images = data.images.copy()
        data.images[12, 3, 5] = np.nan
        return data

    monkeypatch.setattr(sklearn.datasets, "load_digits", poisoned)
    load_digits_split.cache_clear()
    yield
    load_digits_split.cache_clear()


@pytest.mark.parametrize("recipe", ["digits", "hip-mae", "hip-mae-finetune"])
def test_digits_recipes_refuse_nan_pixels(recipe, nan_digits, tmp_path, capsys):
    extra = ["--positions", "random"] if recipe == "hip-mae-finetune" else []
    argv = ["train", recipe, "--steps", "1", "--no-progress", "--out", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "digits images[12, 0, 3, 5] is nan: expected finite values" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_natural_images_refuse_inf_pixels(monkeypatch, tmp_path, capsys):
    import skimage.data as skimage_data
    real = skimage_data.chelsea

    def poisoned():
        photo = real().astype(np.float32)
        photo[7, 9, 2] = np.inf
        return photo

    monkeypatch.setattr(skimage_data, "chelsea", poisoned)
    argv = ["train", "hip-mae", "--data", "natural", "--crop-size", "6", "--num-crops", "2", "--num-eval-crops", "2",
            "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skimage.data.chelsea()[7, 9, 2] is inf" in err, err


@pytest.mark.parametrize("argv, message", [
    (["train", "digits", "--lr", "nan", "--print-config"], "lr=nan is invalid"),
    (["train", "hip-mae", "--mask-ratio", "inf", "--print-config"], "mask_ratio=inf is invalid"),
    (["train", "digits", "--label-smoothing", "nan", "--print-config"], "label_smoothing=nan is invalid"),
    (["generate", "--checkpoint", "missing", "--temperature", "nan"], "temperature=nan is invalid"),
    (["generate", "--checkpoint", "missing", "--top-p", "inf"], "top_p=inf is invalid"),
])
def test_non_finite_numbers_on_the_command_line_are_refused(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
