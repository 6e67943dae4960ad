"""`perceivers train mlm`: byte ids of the text corpus, whole-word masking, the baseline byte, and a tiny end-to-end
run (train, metrics.json, samples.txt, eval, fill-mask on the result)."""

from __future__ import annotations

import json

import pytest
import torch

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError
from perceivers.data.mlm import (
    MLMWindows,
    apply_mask,
    byte_mask,
    draw_mask,
    evaluation_batch,
    mlm_ids,
    span_mask,
    word_mask,
)
from perceivers.data.text import is_validation_file
from perceivers.tokenizers import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    ARBytesTokenizer,
    BytesTokenizer,
)
from perceivers.training import EngineConfig, run_task
from perceivers.training.recipes import RECIPES
from perceivers.training.tasks_mlm import MLMTask, most_frequent_word_byte

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a, **k: None}
encode = BytesTokenizer().encode


def test_ids_are_the_official_tokenizer_with_document_marks():
    ar = torch.tensor(ARBytesTokenizer().encode("ab\n", sos=True, eos=True), dtype=torch.int16)
    assert mlm_ids(ar).tolist() == [BOS_ID, *encode("ab\n"), EOS_ID]
    windows = MLMWindows(ar, length=3)
    assert len(windows) == 3 and windows[1].tolist() == encode("ab\n")


def test_word_mask_covers_whole_words_only():
    ids = torch.tensor([encode("alpha  beta\tgamma\ndelta(x) ep")] * 200)
    mask = word_mask(ids, 0.5, torch.Generator().manual_seed(0))
    space = torch.isin(ids, torch.tensor(encode(" \t\n")))
    assert not bool(mask[space].any())
    words = [(0, 5), (7, 11), (12, 17), (18, 26), (27, 29)]
    for a, b in words:  # every word is masked entirely or not at all, about half of the time
        rows = mask[:, a:b]
        assert bool((rows.all(1) | ~rows.any(1)).all())
        assert 60 < int(rows.all(1).sum()) < 140
    assert (apply_mask(ids, mask)[mask] == MASK_ID).all()
    again = word_mask(ids, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    special = torch.tensor([[BOS_ID, *encode("x"), EOS_ID]])
    assert word_mask(special, 1.0).tolist() == [[False, True, False]]


def _runs(row):
    """``(start, length)`` of the maximal runs of True in a boolean row."""
    runs, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_byte_mask_draws_each_word_byte_alone():
    ids = torch.tensor([encode("abcdefgh ijklmnop")] * 400)
    mask = byte_mask(ids, 0.3, torch.Generator().manual_seed(0))
    assert not bool(mask[:, 8].any())  # the space
    share = mask.float().sum(0)[torch.arange(17) != 8] / 400  # every byte about 0.3, on its own
    assert bool(((share > 0.2) & (share < 0.4)).all())
    words = mask[:, :8]
    assert 0 < int((words.all(1) | ~words.any(1)).sum()) < 400  # words are cut, unlike word_mask
    assert torch.equal(mask, byte_mask(ids, 0.3, torch.Generator().manual_seed(0)))


def test_span_mask_masks_runs_of_span_length():
    ids = torch.tensor([encode("x" * 60)] * 200)
    mask = span_mask(ids, 0.1, torch.Generator().manual_seed(0), span_length=4)
    inner = [n for row in mask for a, n in _runs(row) if a > 0 and a + n < 60]  # not cut by the window's edges
    assert min(inner) == 4 and 0.06 < float(mask.float().mean()) < 0.12  # about mask_prob of the bytes
    spaced = torch.tensor([encode("ab cd ef gh " * 5)] * 50)
    assert not bool(span_mask(spaced, 0.5, torch.Generator().manual_seed(1))[spaced == encode(" ")[0]].any())


def test_draw_mask_and_held_out_follow_the_masking_setting():
    ids = torch.tensor([encode("alpha beta gamma delta " * 4)] * 50)
    for masking, fn in (("bytes", byte_mask), ("spans", span_mask), ("words", word_mask)):
        expected = fn(ids, 0.2, torch.Generator().manual_seed(3))
        assert torch.equal(draw_mask(ids, masking, 0.2, torch.Generator().manual_seed(3)), expected)
    stream = torch.tensor(ARBytesTokenizer().encode("one two three four five six " * 40), dtype=torch.int16)
    masks = {m: evaluation_batch(stream, num_windows=8, length=64, mask_prob=0.3, seed=5, masking=m)[1]
             for m in ("bytes", "words")}
    assert not torch.equal(masks["bytes"], masks["words"])
    task = MLMTask(masking="spans", span_length=5)
    assert torch.equal(task.draw_mask(ids, torch.Generator().manual_seed(2)),
                       span_mask(ids, 0.15, torch.Generator().manual_seed(2), span_length=5))


def test_unmasked_weight_adds_the_loss_on_the_unmasked_bytes():
    torch.manual_seed(0)
    model = MLMTask(model="perceiver-io-language-debug").build_model()
    batch = torch.tensor([encode("def f(x):\n    return x + 1  # one more byte here, " * 2)[:64]] * 4)
    losses = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(1)  # the same mask for both
        losses[weight] = MLMTask(masking="bytes", mask_prob=0.3, unmasked_weight=weight).training_loss(model, batch)
    (plain, metrics), (weighted, extra) = losses[0.0], losses[0.5]
    assert "unmasked_loss" not in metrics and extra["masked_loss"] == metrics["masked_loss"]
    assert extra["unmasked_loss"] > 0
    assert float(weighted.detach()) == pytest.approx(float(plain.detach()) + 0.5 * extra["unmasked_loss"], rel=1e-5)


def test_baseline_byte_skips_whitespace():
    ar = torch.tensor(ARBytesTokenizer().encode("  \n\n\n  eee a"), dtype=torch.int16)
    assert most_frequent_word_byte(ar) == encode("e")[0]


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="mask_prob"):
        MLMTask(mask_prob=0.0)
    with pytest.raises(ConfigError, match="masking='chars'.*bytes"):
        MLMTask(masking="chars")
    with pytest.raises(ConfigError, match="span_length"):
        MLMTask(span_length=0)
    with pytest.raises(ConfigError, match="unmasked_weight"):
        MLMTask(unmasked_weight=-1.0)
    with pytest.raises(ConfigError, match="length=64.*max_seq_len 32"):
        _ = MLMTask(length=64).window
    with pytest.raises(ConfigError, match="model='perceiver-ar-copy'.*perceiver-io-mlm-stdlib"):
        MLMTask(model="perceiver-ar-copy").build_model()


def _write_corpus(root):
    names = [f"m{i}.py" for i in range(40)]
    assert any(map(is_validation_file, names)) and not all(map(is_validation_file, names))
    root.mkdir()
    for i, name in enumerate(names):
        (root / name).write_text(f"def function_{i}(value):\n    return value + {i}  # see here\n" * 6)


def test_tiny_run_then_eval_and_fill_mask(tmp_path, capsys):
    recipe = RECIPES["mlm"]()
    assert isinstance(recipe.task, MLMTask) and recipe.task.model == "perceiver-io-mlm-stdlib"
    _write_corpus(tmp_path / "corpus")
    task = MLMTask(model="perceiver-io-language-debug", eval_windows=4, data_root=str(tmp_path / "corpus"))
    engine = EngineConfig(steps=2, epochs=None, batch_size=4, lr=1e-3, log_every=1, eval_every=0)
    result = run_task(task, engine, tmp_path / "run", **QUIET)
    assert result["recipe"] == "mlm" and result["length"] == 64 and result["num_masked_bytes"] > 0
    assert 0.0 <= result["masked_byte_accuracy"] <= 1.0 and result["baseline_byte"] == "e"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["masked_byte_accuracy"] == result["masked_byte_accuracy"]
    samples = (tmp_path / "run" / "samples.txt").read_text()
    assert "--- filled by the model" in samples and "_" in samples.split("--- filled")[0]
    capsys.readouterr()
    model = str(tmp_path / "run" / "model")
    assert main(["eval", "mlm", "--checkpoint", model, "--eval-windows", "4",
                 "--data-root", str(tmp_path / "corpus")]) == 0
    assert f"masked_byte_accuracy: {result['masked_byte_accuracy']}" in capsys.readouterr().out
    assert main(["fill-mask", "--checkpoint", model, "--text", "def [MASK][MASK][MASK](x):"]) == 0
    filled = capsys.readouterr().out.strip()
    # three bytes filled (an untrained model's may not be UTF-8: one replacement character each, or fewer)
    assert filled.startswith("def ") and filled.endswith("(x):") and 1 <= len(filled) - len("def (x):") <= 3
    assert "[MASK]" not in filled
