"""Byte-level text data, bits per byte, `perceivers train text` and `perceivers generate` (tiny, offline)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from perceivers.cli.main import main
from perceivers.data.text import (
    TextWindows,
    bits_per_byte,
    is_validation_file,
    load_corpus,
    source_files,
    validation_windows,
)
from perceivers.tokenizers import AR_EOS_ID as EOS_ID
from perceivers.tokenizers import AR_SOS_ID as SOS_ID
from perceivers.tokenizers import ARBytesTokenizer
from perceivers.training.losses import evaluate_bits_per_byte, latent_targets
from perceivers.training.tasks import TextTask

encode = ARBytesTokenizer().encode


def _write_tree(root, n=40):
    for i in range(n):
        sub = root / ("pkg" if i % 2 else "") / ("tests" if i % 7 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    (root / "site-packages").mkdir()
    (root / "site-packages" / "other.py").write_text("x = 1\n")


def test_split_is_by_file_deterministic_and_skips_tests(tmp_path):
    _write_tree(tmp_path)
    files = source_files(tmp_path)
    assert files == sorted(files) and not any("site-packages" in f or "tests/" in f for f in files)
    assert len(source_files(tmp_path, include_tests=True)) > len(files)
    corpus = load_corpus(tmp_path)
    assert set(corpus.train_files) | set(corpus.validation_files) == set(files)
    assert not set(corpus.train_files) & set(corpus.validation_files)
    assert all(is_validation_file(f) for f in corpus.validation_files)
    assert is_validation_file("pkg/m1.py") == is_validation_file("pkg/m1.py")  # no salted hash
    again = load_corpus(tmp_path)
    assert torch.equal(corpus.train, again.train) and torch.equal(corpus.validation, again.validation)
    # Each document is [SOS, bytes, EOS]: the number of SOS tokens is the number of files.
    assert int((corpus.validation == SOS_ID).sum()) == len(corpus.validation_files)


def test_windows_and_latent_targets(tmp_path):
    stream = torch.tensor(encode("abcdefghij", sos=True, eos=True) * 3, dtype=torch.int16)
    dataset = TextWindows(stream, context=10, min_length=4)
    assert len(dataset) == 36 - 11 + 1  # every window of 11 tokens
    windows, lengths = (torch.stack(t) for t in zip(*(dataset[i] for i in range(len(dataset)))))
    assert windows.shape == (26, 11) and bool((lengths >= 5).all()) and bool((lengths < 11).any())
    for i, (w, n) in enumerate(zip(windows, lengths)):
        assert bool((w[n:] == 0).all()) and bool((w[:n] > 0).all())
        if n < 11:
            assert int(w[0]) == SOS_ID  # cut at a document start
            assert torch.equal(w[:n], stream[i + 11 - n:i + 11].long())  # the window's end, from its last SOS
        else:
            assert torch.equal(w, stream[i:i + 11].long())
    inputs, input_lengths, targets = latent_targets(windows, lengths, 4)
    for i in range(26):
        n = int(input_lengths[i])
        assert torch.equal(targets[i], windows[i, n - 3:n + 1])  # latent j predicts token L - N + j + 1
    val = validation_windows(stream, num_windows=3, context=10)
    assert torch.equal(val[0], stream[:11].long()) and torch.equal(val[-1], stream[-11:].long())


def test_bits_per_byte_hand_computed():
    # Two predictions: p(target) = 1/2 and 1/4 -> 1 + 2 bits; a third target is EOS and not counted.
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.2, 0.3, 0.5]]))
    logits = torch.cat([torch.full((3, 3), -1e9), logits], dim=1)  # ids 0..2 impossible, bytes 3..5
    bits, count = bits_per_byte(logits, torch.tensor([3, 5, EOS_ID]))
    assert count == 2 and bits == pytest.approx(3.0, abs=1e-5)
    uniform = bits_per_byte(torch.zeros(4, 259), torch.tensor([3, 10, 100, 258]))
    assert uniform[0] / uniform[1] == pytest.approx(math.log2(259), abs=1e-5)


TINY = ["--context", "48", "--latents", "8", "--channels", "16", "--heads", "2", "--layers", "1", "--steps", "3",
        "--batch-size", "2", "--eval-windows", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    _write_tree(root)
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "text", "--out", str(out), "--data-root", str(root), *TINY]) == 0
    return out


def test_train_text_end_to_end(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["recipe"] == "text" and metrics["steps"] == 3 and metrics["context"] == 48
    assert 8 <= metrics["num_validation_bytes"] <= 2 * 8  # the last window ends with an EOS (not a byte)
    assert 0 < metrics["validation_bits_per_byte"] < 12
    assert metrics["split"]["validation_files"] >= 1
    assert (tiny_run / "model" / "model.safetensors").is_file()


def test_text_task_scores_models_of_different_contexts_on_the_same_targets(tmp_path):
    _write_tree(tmp_path)
    tiny = dict(num_latents=8, channels=16, num_heads=2, num_layers=1, eval_windows=3, data_root=str(tmp_path))
    long = TextTask(context=48, eval_context=48, **tiny)
    short = TextTask(context=8, eval_context=48, max_wavelength=48, **tiny)  # a causal transformer of 8 tokens
    model = short.build_model().eval()
    assert (model.config.max_context_length, model.config.wavelength) == (8, 48)
    windows = validation_windows(short.corpus().validation, num_windows=3, context=48)  # (3, 49): long's windows
    expected = evaluate_bits_per_byte(model, windows, num_latents=8, context=8)
    result = short.evaluate(model)
    assert result == {"validation_bits_per_byte": pytest.approx(expected["bits_per_byte"]),
                      "num_validation_bytes": expected["num_predicted_bytes"]}
    assert long.evaluate(long.build_model())["num_validation_bytes"] == result["num_validation_bytes"] > 0
    assert short.describe()["eval_context"] == 48 and TextTask(context=8, **tiny).describe()["eval_context"] == 8
    with pytest.raises(ValueError, match="eval_context=16 is invalid"):
        TextTask(context=48, eval_context=16)
    with pytest.raises(ValueError, match="eval_context=64 is invalid"):  # the registered model reads 1,024
        TextTask(eval_context=64, data_root=str(tmp_path)).train_dataset(0)
    with pytest.raises(ValueError, match="max_wavelength"):  # the model's own check: at least the context
        TextTask(context=48, max_wavelength=16, **tiny).build_model()


def test_generate_streams_respects_max_new_tokens_and_seed(tiny_run, capsys, monkeypatch):
    args = ["generate", "--checkpoint", str(tiny_run / "model"), "--prompt", "def ", "--max-new-tokens", "7"]
    writes: list[str] = []
    assert main([*args, "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main([*args, "--seed", "3"]) == 0
    assert capsys.readouterr().out == first and first.startswith("def ")
    assert len(first[4:].rstrip("\n").encode("utf-8", errors="surrogatepass")) <= 7 * 3  # <= 7 bytes, replaced
    import sys

    monkeypatch.setattr(sys.stdout, "write", lambda s: writes.append(s) or len(s))
    assert main([*args, "--greedy"]) == 0
    assert 1 < len(writes) <= 1 + 7 + 1  # prompt, one write per produced character, final newline


@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--temperature", "0"], "temperature"),
    (["--top-p", "1.5"], "top_p"),
    (["--prompt", "x" * 60], "max_context_length"),
])
def test_generate_errors_exit_2(tiny_run, capsys, extra, message):
    assert main(["generate", "--checkpoint", str(tiny_run / "model"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_generate_and_train_text_argument_errors(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "text", "--out", str(tmp_path), "--max-shift", "2", "--no-progress"]) == 2
    assert "unknown setting 'max-shift'" in capsys.readouterr().err  # a digits setting
    assert main(["train", "digits", "--out", str(tmp_path), "--latents", "2", "--no-progress"]) == 2
    assert "unknown setting 'latents'" in capsys.readouterr().err  # a text setting
    assert main(["train", "text", "--out", str(tmp_path), "--steps", "0", "--no-progress"]) == 2
    assert "steps=0" in capsys.readouterr().err


def test_generate_streamer_sees_every_token():
    from perceivers.generation import generate
    from perceivers.models import create_model

    torch.manual_seed(0)
    model = create_model("perceiver-ar-debug").eval()
    seen: list[int] = []
    out = generate(model, [[2, 10, 11]], max_new_tokens=5, streamer=lambda t: seen.append(int(t[0])))
    assert seen == out.sequences[0, 3:].tolist()
    with pytest.raises(ValueError, match="beam"):
        generate(model, [[2, 10]], max_new_tokens=2, num_beams=2, streamer=print)
