"""One-line errors (exit status 2) for what used to be a traceback or a misleading message: weights that are not
float32 or not finite, a missing optional dependency, an unbounded --max-new-tokens, an unknown `models` filter,
Ctrl-C during start-up; and the registry's descriptions agree with the computed parameter counts."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import perceivers.cli.main as cli
from perceivers.cli.main import main


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"perceivers {command}: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    from perceivers.models import create_model

    torch.manual_seed(0)
    return create_model("perceiver-io-digits").save_pretrained(tmp_path_factory.mktemp("ckpt") / "digits")


def _rewritten(folder, out, change):
    """A copy of the model folder ``folder`` with every tensor of its weights passed through ``change``."""
    out.mkdir()
    (out / "config.json").write_bytes((folder / "config.json").read_bytes())
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: change(k, v) for k, v in sorted(state.items())}, str(out / "model.safetensors"))
    return out


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_integer_weights_are_named(command, digits_folder, tmp_path, capsys):
    folder = _rewritten(digits_folder, tmp_path / "int", lambda k, v: (v * 100).to(torch.int32))
    argv = ["eval", "digits", "--checkpoint", str(folder)] if command == "eval" else [command, "--checkpoint",
                                                                                      str(folder)]
    assert main(argv) == 2
    err = _one_line(capsys, command)
    assert re.search(r"model\.safetensors holds '[\w.]+' as I32: expected floating-point weights", err), err


def test_nan_weights_name_the_tensor_and_position(digits_folder, tmp_path, capsys):
    def poison(key, value):
        if key == "decoder.output.bias":
            value = value.clone()
            value[3] = float("nan")
        return value

    folder = _rewritten(digits_folder, tmp_path / "nan", poison)
    assert main(["eval", "digits", "--checkpoint", str(folder)]) == 2
    assert "model.safetensors: decoder.output.bias[3] is nan: expected finite values" in _one_line(capsys, "eval")


def test_float16_weights_evaluate_in_float32(digits_folder, tmp_path, capsys):
    folder = _rewritten(digits_folder, tmp_path / "f16", lambda k, v: v.half())
    assert main(["eval", "digits", "--checkpoint", str(folder)]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert int(printed["num_test"]) == 360 and 0.0 <= float(printed["test_accuracy"]) <= 1.0


def test_cuda_without_cuda_names_device(digits_folder, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["eval", "digits", "--checkpoint", str(digits_folder), "--device", "cuda"]) == 2
    assert "--device='cuda' is invalid: expected a device this machine has (0 CUDA" in _one_line(capsys, "eval")


def test_bad_device_is_checked_before_the_folder(tmp_path, capsys):
    assert main(["eval", "digits", "--checkpoint", str(tmp_path / "missing"), "--device", "bogus"]) == 2
    err = _one_line(capsys, "eval")
    assert "--device='bogus' is invalid" in err and "safetensors" not in err


def test_missing_optional_dependency_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage.data` raises ImportError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    argv = ["train", "hip-mae", "--data", "natural", "--crop-size", "5", "--num-crops", "3", "--num-eval-crops", "3",
            "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "need scikit-image: pip install 'perceivers[images]'" in _one_line(capsys, "train")


def test_max_new_tokens_is_bounded(tmp_path, capsys):
    # checked before the checkpoint is read, so a missing folder does not matter
    argv = ["generate", "--checkpoint", str(tmp_path / "missing"), "--max-new-tokens", "1000000000000"]
    assert main(argv) == 2
    assert "--max-new-tokens=1000000000000 is invalid: expected at most 1,048,576" in _one_line(capsys, "generate")


@pytest.mark.parametrize("where", ["build_parser", "load_model"])
def test_ctrl_c_during_start_up_is_one_line(where, monkeypatch, digits_folder, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, where, interrupt)
    assert main(["eval", "digits", "--checkpoint", str(digits_folder)]) == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("text, message", [
    ("hip-mae-digits-clasifier", "did you mean hip-mae-digits-classifier"),
    ("nonsense", "filter by a family (hip, perceiver-ar, perceiver-imagenet, perceiver-io)"),
])
def test_unknown_models_filter_is_an_error(text, message, capsys):
    assert main(["models", text]) == 2
    err = _one_line(capsys, "models")
    assert f"filter {text!r} matches no registered model" in err and message in err


def test_descriptions_are_sentences_with_true_counts():
    """Every description is one full sentence (capital, full stop, balanced brackets) and every parameter count it
    quotes (``N params``, or any number of a million or more) is the computed count."""
    from perceivers.models import create_model, get_entry, list_models

    for name in list_models():
        text = get_entry(name).description
        assert text[:1].isupper() and text.endswith("."), (name, text)
        assert text.count("(") == text.count(")") and text.count("`") % 2 == 0, (name, text)
        count = create_model(name, device="meta").num_parameters()
        quoted = re.findall(r"(\d{1,3}(?:,\d{3})+)\s+params", text) + re.findall(r"\d{1,3}(?:,\d{3}){2,}", text)
        for number in quoted:
            assert int(number.replace(",", "")) == count, (name, number, count)


def test_a_real_ctrl_c_while_loading_is_one_line():
    """SIGINT delivered while the command loads its model (here: a load that waits) ends with `interrupted`, 130."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    import perceivers

    script = ("import sys, time\n"
              "import perceivers.cli.main as cli\n"
              "def slow(*args, **kwargs):\n"
              "    print('loading', file=sys.stderr, flush=True)\n"
              "    time.sleep(120)\n"
              "cli.load_model = slow\n"
              "raise SystemExit(cli.main(['eval', 'digits', '--checkpoint', 'anywhere']))\n")
    root = str(Path(perceivers.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stderr.readline() == "loading\n"
        child.send_signal(signal.SIGINT)
        err = child.stderr.read()
        assert child.wait(timeout=120) == 130
    finally:
        if child.poll() is None:
            child.kill()
    assert err == "interrupted\n", err
