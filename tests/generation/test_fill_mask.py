"""Masked byte filling (library function and ``perceivers fill-mask``) on a tiny random MLM checkpoint."""

from __future__ import annotations

import pytest
import torch
from testkit.models import randomize_

from perceivers.cli.main import main
from perceivers.core.errors import ConfigTypeError, UserError
from perceivers.generation.fill_mask import fill_mask, masked_ids
from perceivers.models import create_model
from perceivers.tokenizers import MASK_ID, NUM_SPECIAL

TEXT = "The capital of France is [MASK][MASK][MASK][MASK][MASK]."


def _model():
    return randomize_(create_model("perceiver-io-language-debug"), 0.3).eval()


@pytest.fixture
def checkpoint(tmp_path):
    model = _model()
    with torch.no_grad():  # make byte "x" the certain prediction everywhere
        model.embedding_decoder.bias[ord("x") + NUM_SPECIAL] = 1e4
    return model.save_pretrained(tmp_path / "mlm")


def test_masked_ids():
    ids = masked_ids("a[MASK][MASK]é")
    assert ids == [ord("a") + 6, MASK_ID, MASK_ID, 0xC3 + 6, 0xA9 + 6]
    assert masked_ids("a<m>", mask_token="<m>", add_special_tokens=True) == [4, ord("a") + 6, MASK_ID, 5]
    with pytest.raises(ValueError, match="no '\\[MASK\\]'") as err:
        masked_ids("nothing to fill")
    assert isinstance(err.value, UserError)
    with pytest.raises(UserError, match="mask_token='' is invalid"):
        masked_ids("a", mask_token="")


def test_fill_mask_refuses_other_models_before_running_them():
    with pytest.raises(UserError, match="got a sequence classifier"):
        fill_mask(create_model("perceiver-io-language-classifier", device="meta"), "a[MASK]")
    with pytest.raises(UserError, match="got a PerceiverAR"):
        fill_mask(create_model("perceiver-ar-debug"), "a[MASK]")


def test_fill_mask_keeps_unmasked_bytes():
    result = fill_mask(_model(), TEXT)
    masked = result.input_ids == MASK_ID
    assert result.filled_ids.shape == result.input_ids.shape == (len(b"The capital of France is .") + 5,)
    assert int(masked.sum()) == 5
    assert torch.equal(result.filled_ids[~masked], result.input_ids[~masked])
    assert ((result.filled_ids[masked] >= NUM_SPECIAL) & (result.filled_ids[masked] < 262)).all()
    assert result.text.startswith("The capital of France is ") and result.text.endswith(".")


def test_cli_fill_mask(checkpoint, capsys):
    assert main(["fill-mask", "--checkpoint", str(checkpoint), "--text", TEXT, "--threads", "1"]) == 0
    assert capsys.readouterr().out == "The capital of France is xxxxx.\n"
    assert main(["fill-mask", "--checkpoint", str(checkpoint), "--text", "é<>", "--mask-token", "<>",
                 "--add-special-tokens"]) == 0
    assert capsys.readouterr().out == "éx\n"


def test_cli_fill_mask_errors(checkpoint, tmp_path, capsys):
    assert main(["fill-mask", "--checkpoint", str(checkpoint), "--text", "no mask here"]) == 2
    assert "contains no '[MASK]'" in capsys.readouterr().err
    assert main(["fill-mask", "--checkpoint", str(checkpoint), "--text", "a" * 64 + "[MASK]"]) == 2
    err = capsys.readouterr().err
    assert "65 byte ids long" in err and "at most 64" in err
    create_model("perceiver-ar-debug").save_pretrained(tmp_path / "ar")
    assert main(["fill-mask", "--checkpoint", str(tmp_path / "ar"), "--text", TEXT]) == 2
    assert "masked language model" in capsys.readouterr().err


@pytest.mark.parametrize("text", [None, 123, ["a [MASK]"], b"a [MASK]"], ids=["None", "int", "list", "bytes"])
def test_fill_mask_names_a_text_that_is_not_a_str(text):
    with pytest.raises(ConfigTypeError, match="text must be a str, got"):
        fill_mask(_model(), text)
